"""Async client for vLLM's OpenAI-compatible server: next-token log-probabilities and short
generations for chat prompts, over one pooled HTTP connection set.

Chat messages go to `/v1/chat/completions`, so the server renders the model's own chat template;
identical leading messages render to identical leading tokens, which is what prefix caching reuses.
With the model's `ChatTemplate`, several prompts' next-token logprobs go as one `/v1/completions`
request instead (rendered here, no special tokens added by the server: the same tokens), which
saves the per-request cost of many small requests. With a `PromptEncoder` as well, the prompts go
as token ids laid out on KV-block boundaries (see `service.llm.prompt_tokens`). Concurrency is
capped by a semaphore so one large request cannot flood the engine's queue.

A reply that cannot be matched to the prompts asked (not JSON, no choices, too few or too many, or
repeated indices) is an `LLMError`. Log-probabilities are passed on as the server sent them, NaN and
infinities included: judging an answer is the scoring's job (`service.ranking.scoring`), which counts
such an answer as invalid instead of reading a distribution from what is left of it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import httpx

from service.llm.chat_template import ChatTemplate
from service.llm.prompt_tokens import PromptEncoder, encoder_for_model


class LLMError(Exception):
    """The LLM did not give a usable answer: unreachable, timed out, HTTP error or malformed reply."""


@dataclass(frozen=True)
class LLMSettings:
    base_url: str = "http://127.0.0.1:8000"
    model: str = "recranker"
    timeout_s: float = 30.0
    max_concurrency: int = 64
    top_logprobs: int = 20
    max_connections: int = 64


def prompt_format_of(model_dir: str | Path, token_block: int) -> tuple[ChatTemplate | None, PromptEncoder | None]:
    """The model folder's chat template and the encoder for the block layout it was tuned on,
    loaded once for any number of clients."""
    return ChatTemplate.from_model_dir(model_dir), encoder_for_model(model_dir, token_block)


class VLLMClient:
    def __init__(self, settings: LLMSettings, http: httpx.AsyncClient | None = None, template: ChatTemplate | None = None, encoder: PromptEncoder | None = None):
        self.settings = settings
        self.template = template
        self.encoder = encoder
        self._http = http or httpx.AsyncClient(
            base_url=settings.base_url,
            timeout=settings.timeout_s,
            limits=httpx.Limits(max_connections=settings.max_connections, max_keepalive_connections=settings.max_connections),
        )
        self._slots = asyncio.Semaphore(settings.max_concurrency)

    @classmethod
    def for_model(cls, settings: LLMSettings, model_dir: str | Path | None, token_block: int = 0) -> VLLMClient:
        """A client that sends a task's prompts the way the model in `model_dir` was tuned on
        (its chat template, its block layout); with no model folder at hand, chat requests."""
        if model_dir is None:
            return cls(settings)
        template, encoder = prompt_format_of(model_dir, token_block)
        return cls(settings, template=template, encoder=encoder)

    async def _post(self, path: str, payload: dict) -> list[dict]:
        body = {"model": self.settings.model, "temperature": 0.0, **payload}
        async with self._slots:
            try:
                try:
                    resp = await self._http.post(path, json=body)
                except (httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError):
                    # a pooled keep-alive connection the server had just closed (seen in `make bench`:
                    # one such error dropped a whole task); the request is idempotent, so once more
                    resp = await self._http.post(path, json=body)
            except httpx.HTTPError as exc:
                raise LLMError(f"{type(exc).__name__}: {exc}") from exc
        if resp.status_code != 200:
            raise LLMError(f"HTTP {resp.status_code}: {resp.text[:200]}")
        try:
            choices = resp.json()["choices"]
            if not choices or not all(isinstance(c, dict) for c in choices):
                raise KeyError("choices")
            ordered = sorted(choices, key=lambda c: c.get("index", 0))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise LLMError(f"malformed reply: {resp.text[:200]}") from exc
        if any("index" in c for c in ordered) and [c.get("index") for c in ordered] != list(range(len(ordered))):
            raise LLMError(f"reply choices have indices {[c.get('index') for c in ordered][:20]}, not 0..{len(ordered) - 1}")
        return ordered

    async def _chat(self, payload: dict) -> dict:
        choices = await self._post("/v1/chat/completions", payload)
        if len(choices) != 1:
            raise LLMError(f"{len(choices)} answers for 1 prompt")
        return choices[0]

    def _completion_prompts(self, messages_list: list[list[dict[str, str]]]) -> list[str] | list[list[int]]:
        """Prompts for `/v1/completions`, as the model was tuned on them: its chat template, then its
        block layout where it has one."""
        texts = [self.template.render(m) for m in messages_list]
        return self.encoder.encode_many(texts) if self.encoder else texts

    async def next_token_logprobs_many(self, messages_list: list[list[dict[str, str]]]) -> list[dict[str, float]]:
        """`next_token_logprobs` of several prompts: one request with the chat template, else one
        request per prompt, all at once."""
        if self.template is None or not messages_list:
            return list(await asyncio.gather(*(self.next_token_logprobs(m) for m in messages_list)))
        prompts = self._completion_prompts(messages_list)
        choices = await self._post(
            "/v1/completions",
            {"prompt": prompts, "max_tokens": 1, "logprobs": self.settings.top_logprobs, "add_special_tokens": False},
        )
        if len(choices) != len(prompts):
            raise LLMError(f"{len(choices)} answers for {len(prompts)} prompts")
        try:
            return [{t: float(lp) for t, lp in c["logprobs"]["top_logprobs"][0].items() if lp is not None} for c in choices]
        except (KeyError, IndexError, TypeError, AttributeError, ValueError) as exc:
            raise LLMError("reply has no logprobs") from exc

    async def next_token_logprobs(self, messages: list[dict[str, str]]) -> dict[str, float]:
        """{token text: logprob} for the top candidates of the first answer token."""
        choice = await self._chat(
            {"messages": messages, "max_tokens": 1, "logprobs": True, "top_logprobs": self.settings.top_logprobs}
        )
        try:
            first = choice["logprobs"]["content"][0]
            return {t["token"]: float(t["logprob"]) for t in first["top_logprobs"] if t["logprob"] is not None}
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise LLMError("reply has no logprobs") from exc

    async def generate(self, messages: list[dict[str, str]], max_tokens: int = 16, **extra) -> str:
        if self.template is not None:  # the prompt as the model was tuned on it, as for the logprobs
            choices = await self._post("/v1/completions", {"prompt": self._completion_prompts([messages])[0], "max_tokens": max_tokens, "add_special_tokens": False, **extra})
            if len(choices) != 1:
                raise LLMError(f"{len(choices)} answers for 1 prompt")
            content = choices[0].get("text")
        else:
            choice = await self._chat({"messages": messages, "max_tokens": max_tokens, **extra})
            content = (choice.get("message") or {}).get("content")
        if content is None:
            raise LLMError("reply has no content")
        return content

    async def healthy(self) -> bool:
        try:
            return (await self._http.get("/health", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def aclose(self) -> None:
        await self._http.aclose()
