"""The serving policy as the gateway runs it: the policy (`service.ranking.policy`), the feature
builder over the live history (`service.backbones.feature_source`) and the fitted rankers.

Loaded once at start-up from <model>/policy/<backbone>/ (RECRANKER_POLICY_DIR); a missing policy folder means an export from
before policies (the gateway then serves the hybrid by default, as it did), a broken one stops the
start with one line naming the file (exit 2), and so does a policy fitted on other data than the
serving tables hold.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from service.backbones.feature_source import FeatureInputs, FeatureSource, LikedItem
from service.backbones.scorers import BackboneScorerError
from service.ranking.fusion import FusionModelError, LearnedFusion
from service.ranking.policy import POLICY_FILE, PolicyError, ServingPolicy, read_popularity

log = logging.getLogger("recranker.policy")


class PolicyLoadError(RuntimeError):
    """The policy folder exists but cannot be served; the message names the file and the fix."""


@dataclass(frozen=True, eq=False)
class PolicyRuntime:
    policy: ServingPolicy
    features: FeatureSource
    models: dict[str, LearnedFusion] = field(default_factory=dict)  # "learned_no_llm", "learned"

    def inputs(self, user_id: str, liked: Sequence[LikedItem], candidate_ids: Sequence[str], candidate_genres: Sequence[Sequence[str]]) -> FeatureInputs:
        return self.features.inputs(self.policy.backbone, user_id, liked, candidate_ids, candidate_genres)


def load_policy_runtime(folder: Path, backbone_dirs_root: Path, user_ids: Sequence[str], item_ids: Sequence[str],
                        data_fingerprint: str) -> PolicyRuntime | None:
    """The policy in `folder`, ready to serve; None when there is none."""
    if not (folder / POLICY_FILE).is_file():
        log.warning("no serving policy in %s: serving the hybrid by default; `make tune` fits one", folder)
        return None
    try:
        policy = ServingPolicy.load(folder)
        if policy.data_fingerprint and policy.data_fingerprint != data_fingerprint:
            raise PolicyLoadError(f"{folder / POLICY_FILE}: fitted on data {policy.data_fingerprint[:12]}, the serving tables hold "
                                  f"{data_fingerprint[:12]}; run `make tune` on these data")
        models = {name: LearnedFusion.load(folder / file) for name, file in policy.fitted_models.items()}
        source = FeatureSource.from_artifacts({n: backbone_dirs_root / n for n in policy.feature_backbones}, user_ids, item_ids, read_popularity(folder))
    except (PolicyError, FusionModelError, BackboneScorerError) as exc:
        raise PolicyLoadError(str(exc)) from None
    return PolicyRuntime(policy, source, models)
