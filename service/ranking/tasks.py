"""The three ranking tasks, defined once: prompts, answers, caches, settings and the API use these."""

from __future__ import annotations

from typing import Literal, get_args

TaskName = Literal["pointwise", "pairwise", "listwise"]
POINTWISE, PAIRWISE, LISTWISE = get_args(TaskName)
TASKS: tuple[TaskName, ...] = get_args(TaskName)
