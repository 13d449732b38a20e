"""Where the pipeline keeps its caches and outputs. Both folders are git-ignored."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paths:
    cache: Path
    artifacts: Path

    @classmethod
    def from_env(cls) -> Paths:
        return cls(
            cache=Path(os.environ.get("RECRANKER_CACHE_DIR", ".cache")),
            artifacts=Path(os.environ.get("RECRANKER_ARTIFACTS_DIR", "artifacts")),
        )

    def serving_dir(self, dataset: str) -> Path:
        return self.artifacts / dataset / "serving"

    def backbone_dir(self, dataset: str, backbone: str) -> Path:
        return self.artifacts / dataset / "backbones" / backbone
