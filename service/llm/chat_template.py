"""A model's chat template rendered the way its Hugging Face tokenizer renders it, with jinja2 only
(the gateway loads no transformers).

Why: vLLM's chat endpoint takes one conversation per request, so a user's 21 prompts were 21 HTTP
requests. Rendered here, they go as one `/v1/completions` request per task, which
`service.loadtest.batch_probe` measured at 1.1-1.4x the users/s on the same server (`make bench`:
1.34x for the hybrid), and 1.4-1.9x on a later machine with AMX. A test keeps the rendering identical to the tokenizer's
`apply_chat_template` for the three tasks' prompts.
"""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment


def _raise(message: str) -> None:
    raise TemplateError(message)


class ChatTemplate:
    """Compiled once; `render` runs on the request path, once per prompt."""

    def __init__(self, source: str, special_tokens: dict[str, str]):
        self.source = source
        self.special_tokens = dict(special_tokens)
        self._template = _environment().from_string(source)

    @classmethod
    def from_model_dir(cls, model_dir: str | Path) -> ChatTemplate | None:
        """The template of a model folder (`chat_template.jinja`, else `tokenizer_config.json`'s
        `chat_template`), or None when it has none."""
        folder = Path(model_dir)
        config_file = folder / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        jinja_file = folder / "chat_template.jinja"
        source = jinja_file.read_text() if jinja_file.is_file() else config.get("chat_template")
        if not isinstance(source, str) or not source:
            return None
        special = {k: v for k, v in config.items() if k.endswith("_token") and isinstance(v, str)}
        return cls(source, special)

    def render(self, messages: list[dict[str, str]]) -> str:
        return self._template.render(messages=messages, add_generation_prompt=True, **self.special_tokens)


def _environment() -> ImmutableSandboxedEnvironment:
    # the environment transformers' apply_chat_template renders in
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    return env
