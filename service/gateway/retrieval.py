"""The retrieval backbone behind one interface: embedded (the exported backbone's vectors, scored in
process with numpy) or remote (any HTTP service that speaks the small JSON protocol below; the
gateway's own `POST /v1/retrieve` is one).

Remote protocol: POST {url} with {"user_id", "m", "exclude": [item ids]} ->
{"items": [{"item_id", "score"}, ...]} best first.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import httpx
import numpy as np


class RetrievalError(Exception):
    pass


@dataclass(frozen=True)
class Retrieved:
    item_ids: list[str]
    scores: list[float]


class Retriever(Protocol):
    name: str

    async def top_m(self, user_id: str, m: int, exclude: Collection[str]) -> Retrieved: ...

    async def aclose(self) -> None: ...


class EmbeddedRetriever:
    """Scores = user_vector . item_vector, as every exported backbone defines them."""

    def __init__(self, name: str, user_vectors: np.ndarray, item_vectors: np.ndarray, user_ids: Sequence[str], item_ids: Sequence[str]):
        if user_vectors.shape[0] != len(user_ids) or item_vectors.shape[0] != len(item_ids):
            raise ValueError("vector tables and id lists differ in length")
        self.name = name
        self._users = user_vectors.astype(np.float32)
        self._items = item_vectors.astype(np.float32)
        self._user_index = {u: i for i, u in enumerate(user_ids)}
        self._item_ids = list(item_ids)
        self._item_index = {it: i for i, it in enumerate(item_ids)}

    @classmethod
    def from_artifacts(cls, backbone_dir: Path, tables_dir: Path) -> EmbeddedRetriever:
        """`backbone_dir` holds item_vectors.npy / user_vectors.npy; `tables_dir` users.jsonl and
        items.jsonl in the same (dense index) order."""
        user_ids = [json.loads(line)["user_id"] for line in (tables_dir / "users.jsonl").read_text().splitlines() if line]
        item_ids = [json.loads(line)["item_id"] for line in (tables_dir / "items.jsonl").read_text().splitlines() if line]
        config_file = backbone_dir / "config.json"
        config = json.loads(config_file.read_text()) if config_file.is_file() else {}
        return cls(config.get("backbone", backbone_dir.name), np.load(backbone_dir / "user_vectors.npy"), np.load(backbone_dir / "item_vectors.npy"), user_ids, item_ids)

    def _scores(self, user_id: str) -> np.ndarray:
        try:
            return self._items @ self._users[self._user_index[user_id]]
        except KeyError:
            raise RetrievalError(f"the backbone has no vector for user {user_id!r}") from None

    async def top_m(self, user_id: str, m: int, exclude: Collection[str]) -> Retrieved:
        scores = self._scores(user_id)
        masked = [self._item_index[i] for i in exclude if i in self._item_index]
        if masked:
            scores = scores.copy()
            scores[masked] = -np.inf
        m = min(m, int(np.isfinite(scores).sum()))
        top = np.argpartition(-scores, m - 1)[:m] if m > 0 else np.array([], dtype=int)
        top = top[np.lexsort((top, -scores[top]))]  # score desc, index asc: deterministic ties
        return Retrieved([self._item_ids[i] for i in top.tolist()], [float(scores[i]) for i in top.tolist()])

    async def aclose(self) -> None:
        return None


class RemoteRetriever:
    name = "remote"

    def __init__(self, url: str, timeout_s: float = 0.5, headers: dict[str, str] | None = None, transport: httpx.AsyncBaseTransport | None = None):
        self._url = url
        self._http = httpx.AsyncClient(timeout=timeout_s, headers=headers, transport=transport)

    async def top_m(self, user_id: str, m: int, exclude: Collection[str]) -> Retrieved:
        try:
            resp = await self._http.post(self._url, json={"user_id": user_id, "m": m, "exclude": sorted(exclude)})
        except httpx.HTTPError as exc:
            raise RetrievalError(f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise RetrievalError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            items = resp.json()["items"]
            return Retrieved([str(x["item_id"]) for x in items], [float(x["score"]) for x in items])
        except (ValueError, KeyError, TypeError) as exc:
            raise RetrievalError(f"malformed reply: {resp.text[:200]}") from exc

    async def aclose(self) -> None:
        await self._http.aclose()
