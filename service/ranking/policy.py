"""The serving policy: which ranking `/rerank` serves by default, chosen on validation users.

`make tune` (after its serving-task validation) and `make eval` fit it (`training.evaluation.serving_policy`);
the gateway loads it. Methods, cheapest first (what a request costs on top of retrieval):

  backbone         the candidates' order                                   nothing
  rank_mean_no_llm mean rank of the candidates over the feature backbones  backbone scores (~ms)
  learned_no_llm   LambdaRank over backbone scores and ranks, popularity,  the same + trees (~ms)
                   genre overlap (`service.ranking.features`)
  hybrid           the fixed-weight sum of the LLM tasks                   an LLM call (~1 s on CPU)
  learned          LambdaRank with the LLM task scores as features too     an LLM call + the above

The rule (`choose_method`): start from the backbone order and walk up the list; a dearer method
replaces the current choice only when its per-user validation NDCG@3 is clearly better than the
current choice's (`clearly_better`: a sign test or a one-sided paired t test at z). The learned
methods are judged on cross-validated (held-out) NDCG, so fitting cannot flatter them. Test users
choose nothing.

Apart from `ServingPolicy.save` / `load` (explicit paths) nothing here does I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from service.ranking.tasks import TASKS

METHODS = ("backbone", "rank_mean_no_llm", "learned_no_llm", "hybrid", "learned")  # cheapest first
LLM_METHODS = ("hybrid", "learned")
FEATURE_METHODS = ("rank_mean_no_llm", "learned_no_llm", "learned")  # read the feature backbones' scores
FITTED_METHODS = ("learned_no_llm", "learned")  # a LightGBM model in the policy folder
FORMAT_VERSION = 1
POLICY_FILE, POPULARITY_FILE = "policy.json", "popularity.json"
GUARD_Z = 2.25


class PolicyError(ValueError):
    """A policy this release cannot read; the message names the file and the fix."""


def clearly_better(a: np.ndarray, b: np.ndarray, z: float = GUARD_Z, min_users: int = 10) -> bool:
    """Per-user scores a beat b: at least `min_users` users' scores differ, and either test says so
    at z: a sign test (wins minus losses above z * sqrt(wins + losses)) or a one-sided paired t
    statistic over all users (the mean difference above z standard errors).

    The sign test catches many small consistent gains and ignores size; the paired test weighs how
    far each user's relevant item moved, which is what NDCG rewards, and catches large gains on
    fewer users. Two tests at z = 2.25 make a false "better" about 2.4% likely on noise."""
    diff = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    wins, losses = int((diff > 1e-12).sum()), int((diff < -1e-12).sum())
    n = wins + losses
    if n < min_users:
        return False
    sign = wins - losses > z * math.sqrt(n)
    paired = diff.mean() > z * diff.std(ddof=1) / math.sqrt(len(diff))
    return bool(sign or paired)


def choose_method(per_user: Mapping[str, np.ndarray], z: float = GUARD_Z) -> tuple[str, list[str]]:
    """The policy's rule over per-user validation NDCG@3 of the methods at hand (a subset of
    `METHODS`, "backbone" required): (the chosen method, one line per step saying why)."""
    if "backbone" not in per_user:
        raise ValueError("the backbone order is the rule's starting point")
    chosen, why = "backbone", []
    for method in METHODS[1:]:
        if method not in per_user:
            continue
        better = clearly_better(per_user[method], per_user[chosen], z)
        diff = float(np.mean(per_user[method]) - np.mean(per_user[chosen]))
        why.append(f"{method} vs {chosen}: {diff:+.4f} mean NDCG@3, {'clearly better' if better else 'not clearly better'} at z={z}")
        if better:
            chosen = method
    return chosen, why


@dataclass(frozen=True)
class ServingPolicy:
    """What `/rerank` serves by default for one retrieval backbone's lists, and the evidence."""

    method: str
    backbone: str  # the retrieval backbone whose lists it was chosen on
    m: int
    dataset: str
    data_fingerprint: str | None
    feature_backbones: tuple[str, ...] = ()  # whose scores the features read (FEATURE_METHODS)
    hybrid_weights: dict[str, float] = field(default_factory=dict)
    model_run_key: str | None = None  # the tuned LLM whose tasks were compared
    rule: str = ""
    reasons: tuple[str, ...] = ()
    validation: dict = field(default_factory=dict)  # per method: users, NDCG@3, paired diff vs backbone
    fitted_models: dict[str, str] = field(default_factory=dict)  # method -> file name in the policy folder
    machine: str | None = None
    created: str | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"method {self.method!r} is none of {METHODS}")

    @property
    def tasks(self) -> tuple[str, ...]:
        """The LLM tasks the default request needs: none unless the method reads them."""
        return tuple(TASKS) if self.method in LLM_METHODS else ()

    @property
    def needs_llm(self) -> bool:
        return bool(self.tasks)

    def save(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / POLICY_FILE
        body = {"format_version": FORMAT_VERSION, **asdict(self), "tasks": list(self.tasks)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(body, indent=2))
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, folder: Path) -> ServingPolicy:
        path = folder / POLICY_FILE
        fix = "refit it with `make tune` (or `make eval`)"
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise PolicyError(f"{path}: unreadable serving policy ({type(exc).__name__}: {exc}); {fix}") from None
        if not isinstance(body, dict) or body.get("format_version") != FORMAT_VERSION:
            raise PolicyError(f"{path}: policy format {body.get('format_version') if isinstance(body, dict) else None!r}, "
                              f"this release reads {FORMAT_VERSION}; {fix}")
        body.pop("format_version")
        body.pop("tasks", None)
        try:
            policy = cls(**{**body, "feature_backbones": tuple(body.get("feature_backbones") or ()), "reasons": tuple(body.get("reasons") or ())})
        except (TypeError, ValueError) as exc:
            raise PolicyError(f"{path}: not a serving policy this release reads ({exc}); {fix}") from None
        missing = [name for name in policy.fitted_models.values() if not (folder / name).is_file()]
        if policy.method in FITTED_METHODS and policy.method not in policy.fitted_models or missing:
            raise PolicyError(f"{path}: its fitted model files are missing ({missing or policy.method}); {fix}")
        return policy


def policy_dir(model_dir: Path, backbone: str) -> Path:
    """Where the policy for `backbone`'s candidate lists lives, next to the tuned model."""
    return Path(model_dir) / "policy" / backbone


def read_popularity(folder: Path) -> dict[str, float]:
    """item id -> training-period likes, the table the learned ranker's popularity was fitted on."""
    path = folder / POPULARITY_FILE
    try:
        table = json.loads(path.read_text())
        return {str(k): float(v) for k, v in table.items()}
    except (OSError, ValueError, AttributeError) as exc:
        raise PolicyError(f"{path}: unreadable popularity table ({exc}); refit the policy with `make tune`") from None


def write_popularity(folder: Path, popularity: Mapping[str, float]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / POPULARITY_FILE
    path.write_text(json.dumps({k: float(v) for k, v in popularity.items()}))
    return path


def rank_mean_scores(ranks: Sequence[np.ndarray]) -> np.ndarray:
    """Scores of the plain non-LLM ensemble: minus the mean of the candidates' 0-based ranks over the
    backbones (`features.rank_among` each), so `fusion.rank_by` orders them as the mean rank does,
    ties by backbone order."""
    return -np.mean(np.vstack(ranks), axis=0)
