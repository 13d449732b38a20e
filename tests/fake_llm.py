"""A fake OpenAI-compatible LLM server for tests: `/v1/completions` (a task's prompts in one request)
and `/v1/chat/completions` (one prompt per request), answered as the test's `mode` says.

It is a real HTTP server on a free port, in a thread, so the gateway's own client meets real
faults: a closed connection, an HTML page, a reply that never comes. Healthy answers are next-token
log-probabilities over every task's answer tokens (rating digits, Yes/No, candidate letters), fixed
by the prompt's text, so a repeated prompt gets the same answer.
"""

from __future__ import annotations

import json
import math
import random
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ANSWER_TOKENS = [*"12345", "Yes", "No", *"ABCDEFGHIJ"]
OFF_FORMAT = {"The": math.log(0.6), "I": math.log(0.3), "Sure": math.log(0.1)}
MODES = {
    "healthy": "well-formed answers with finite logprobs (with off_format_every=n, every n-th prompt off format)",
    "off_format": "every answer outside the answer format",
    "plus_inf": "a logprob of +Infinity on one answer token of each task",
    "nan": "a logprob of NaN on one answer token of each task",
    "minus_inf": "every answer token at -Infinity (probability 0): nothing in the format is left",
    "wrong_count": "one choice more than the prompts asked",
    "html": "HTTP 200 with an HTML page",
    "close": "closes the connection without answering",
    "hang": "no answer until the server is closed",
    "slow": "healthy answers, each request after `delay_s` (a model at its capacity)",
}


def healthy_logprobs(prompt: str) -> dict[str, float]:
    rng = random.Random(zlib.crc32(prompt.encode()))
    probs = {t: rng.uniform(0.02, 1.0) for t in ANSWER_TOKENS}
    total = sum(probs.values())
    return {t: math.log(p / total) for t, p in probs.items()}


class FakeLLM:
    def __init__(self) -> None:
        self.mode = "healthy"
        self.off_format_every = 0
        self.prompts = 0  # prompts answered since the last reset
        self._lock = threading.Lock()
        self._release = threading.Event()
        self.delay_s = 0.5
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def reset(self, mode: str = "healthy", off_format_every: int = 0) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {sorted(MODES)}")
        with self._lock:
            self.mode, self.off_format_every, self.prompts = mode, off_format_every, 0

    def answer(self, prompt: str) -> dict[str, float]:
        """The top logprobs the current mode gives this prompt."""
        with self._lock:
            self.prompts += 1
            n, mode, every = self.prompts, self.mode, self.off_format_every
        if mode == "off_format" or (mode == "healthy" and every and n % every == 0):
            return dict(OFF_FORMAT)
        answer = healthy_logprobs(prompt)
        if mode in ("plus_inf", "nan"):
            for token in ("3", "Yes", "B"):
                answer[token] = math.inf if mode == "plus_inf" else math.nan
        elif mode == "minus_inf":
            answer = {**{t: -math.inf for t in answer}, "The": -0.1}
        return answer

    def __enter__(self) -> FakeLLM:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._release.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)


def _top(answer: dict[str, float]) -> tuple[str, float]:
    finite = {t: v for t, v in answer.items() if not math.isnan(v)}
    return max(finite.items(), key=lambda kv: kv[1]) if finite else next(iter(answer.items()))


def _completion_choice(index: int, answer: dict[str, float]) -> dict:
    token, logprob = _top(answer)
    return {"index": index, "text": token, "finish_reason": "length",
            "logprobs": {"tokens": [token], "token_logprobs": [logprob], "top_logprobs": [answer]}}


def _chat_choice(index: int, answer: dict[str, float]) -> dict:
    token, logprob = _top(answer)
    top = [{"token": t, "logprob": v} for t, v in answer.items()]
    return {"index": index, "message": {"role": "assistant", "content": token}, "finish_reason": "length",
            "logprobs": {"content": [{"token": token, "logprob": logprob, "top_logprobs": top}]}}


def _handler(llm: FakeLLM):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as vLLM's server: the client pools connections

        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("content-type", content_type)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._send(200 if self.path == "/health" else 404, b"{}")

        def do_POST(self) -> None:
            request = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
            mode = llm.mode
            if mode == "close":
                self.close_connection = True
                return
            if mode == "hang":
                llm._release.wait(60)
                self.close_connection = True
                return
            if mode == "slow":
                llm._release.wait(llm.delay_s)
            if mode == "html":
                self._send(200, b"<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html")
                return
            if self.path == "/v1/completions":
                prompts = request["prompt"] if isinstance(request["prompt"], list) else [request["prompt"]]
                choices = [_completion_choice(i, llm.answer(json.dumps(p))) for i, p in enumerate(prompts)]
                make = _completion_choice
            elif self.path == "/v1/chat/completions":
                choices = [_chat_choice(0, llm.answer(json.dumps(request["messages"])))]
                make = _chat_choice
            else:
                self._send(404, b'{"error": "not found"}')
                return
            if mode == "wrong_count":
                choices.append(make(len(choices), healthy_logprobs("extra")))
            body = {"id": "fake", "object": "text_completion", "model": request.get("model"), "choices": choices}
            self._send(200, json.dumps(body).encode())  # NaN and Infinity as Python's json writes them

    return Handler
