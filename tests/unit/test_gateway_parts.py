"""The gateway's parts on their own: retrieval, caches (the real Redis), settings, logs, the
profile and features shared with training, and the load-test arithmetic."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid

import numpy as np
import pytest

from service.gateway.cache import CacheUnavailable, MemoryCache, RedisCache
from service.gateway.history import HistoryCache, ScoreCache, history_fingerprint
from service.gateway.logs import JsonFormatter, request_id_var
from service.gateway.retrieval import EmbeddedRetriever, RetrievalError
from service.gateway.settings import GatewaySettings
from service.gateway.store import EventsLogError, InteractionStore, StoredEvent, UnknownItems, UnknownUser
from service.loadtest.baseline import parse_rating, parse_yes_no
from service.loadtest.load import Outcome, summarise
from service.ranking.profile import HistoryEvent, build_profile
from tests.conftest import synthetic_dataset
from training.data.serving_export import write_serving_tables


def run(coro):
    return asyncio.run(coro)


def retriever() -> EmbeddedRetriever:
    users = np.array([[1.0, 0.0], [0.0, 1.0]])
    items = np.array([[3.0, 0.0], [2.0, 5.0], [2.0, 1.0], [1.0, 4.0], [2.0, 0.0]])
    return EmbeddedRetriever("mf", users, items, ["u1", "u2"], ["a", "b", "c", "d", "e"])


def test_embedded_retrieval_ranks_by_dot_product_skips_excluded_items_and_breaks_ties_by_catalogue_order():
    got = run(retriever().top_m("u1", 3, exclude={"a"}))
    assert got.item_ids == ["b", "c", "e"]  # scores 2, 2, 2 after a (3) is excluded: catalogue order
    assert got.scores == [2.0, 2.0, 2.0]
    assert run(retriever().top_m("u2", 10, exclude=set())).item_ids == ["b", "d", "c", "a", "e"]


def test_embedded_retrieval_never_returns_more_than_the_unexcluded_catalogue_and_rejects_unknown_users():
    assert run(retriever().top_m("u1", 10, exclude={"a", "b", "c"})).item_ids == ["e", "d"]
    with pytest.raises(RetrievalError):
        run(retriever().top_m("nobody", 3, exclude=set()))


def test_memory_cache_expires_entries_after_their_ttl():
    cache = MemoryCache()
    run(cache.set("k", b"v", ttl_s=0))
    assert run(cache.get("k")) is None
    run(cache.set("k", b"v", ttl_s=60))
    assert run(cache.get("k")) == b"v"


def test_redis_cache_reports_a_dead_server_as_cache_unavailable():
    from service.llm.vllm_server import free_port

    async def go():
        cache = RedisCache(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.1)
        try:
            with pytest.raises(CacheUnavailable):
                await cache.get("k")
            assert await cache.ping() is False
        finally:
            await cache.aclose()

    run(go())


def store_of(dataset, folder, events_log=None) -> InteractionStore:
    """The store as the gateway builds it: from the serving tables the pipeline exports."""
    return InteractionStore.from_folder(write_serving_tables(dataset, folder / "serving"), events_log)


@pytest.fixture
def store(tmp_path):
    return store_of(synthetic_dataset(n_users=4, n_items=10, per_user=3), tmp_path)


def test_history_cache_reads_through_the_real_redis_and_an_invalidation_forces_a_reread(store):
    prefix = f"recranker-unit-{uuid.uuid4().hex[:8]}"

    async def go():
        cache = RedisCache("redis://127.0.0.1:6379/0")
        histories = HistoryCache(cache, store, prefix, "synthetic", ttl_s=60)
        try:
            first = await histories.get("0")
            second = await histories.get("0")
            assert await histories.invalidate("0")
            fresh = await histories.get("0")
        finally:
            await cache.delete(histories.key("0"))
            await cache.aclose()
        return first, second, fresh

    first, second, fresh = run(go())
    assert (first.result, second.result, fresh.result) == ("miss", "hit", "miss")
    assert second.value == first.value and fresh.value == first.value


def test_a_cached_history_older_than_an_accepted_event_is_never_served(store):
    """Finding 3: when the invalidation fails (a Redis stall), the entry stays in Redis; this
    gateway's next read still sees the event, and replaces the entry."""
    prefix = f"recranker-unit-{uuid.uuid4().hex[:8]}"

    async def go():
        cache = RedisCache("redis://127.0.0.1:6379/0")
        histories = HistoryCache(cache, store, prefix, "synthetic", ttl_s=60)
        try:
            before = await histories.get("0")
            store.append("0", "9", 5.0, 10**10)  # accepted; its invalidation "failed": nothing deleted
            after = await histories.get("0")
            again = await histories.get("0")
        finally:
            await cache.delete(histories.key("0"))
            await cache.aclose()
        return before, after, again

    before, after, again = run(go())
    assert before.result == "miss" and after.result == "miss" and again.result == "hit"
    assert after.value[-1].item_id == "9" and len(after.value) == len(before.value) + 1
    assert again.value == after.value


def test_score_cache_keys_change_with_the_history_candidates_task_and_model():
    scores = ScoreCache(MemoryCache(), "p", "ds", 60)
    base = scores.key("model", "u", "fp", ["a", "b"], "pointwise")
    assert len({base, scores.key("model", "u", "fp2", ["a", "b"], "pointwise"), scores.key("model", "u", "fp", ["b", "a"], "pointwise"),
                scores.key("model", "u", "fp", ["a", "b"], "pairwise"), scores.key("other", "u", "fp", ["a", "b"], "pointwise")}) == 5
    h = [HistoryEvent("A", 5.0, (), "a")]
    assert history_fingerprint(h) != history_fingerprint([*h, HistoryEvent("B", 4.0, (), "b")])


def test_the_store_rejects_unknown_users_and_items_and_keeps_appended_events_in_time_order(store, tmp_path):
    with pytest.raises(UnknownUser):
        store.history("nobody")
    with pytest.raises(UnknownItems) as err:
        store.check_items(["1", "nope"])
    assert err.value.item_ids == ["nope"]
    store.append("1", "2", 4.0, 0)  # older than everything: goes first
    assert store.history("1")[0].item_id == "2"


def test_events_are_logged_before_they_are_applied_and_replayed_on_restart(tmp_path):
    log = tmp_path / "events.jsonl"
    dataset = synthetic_dataset(n_users=4, n_items=10, per_user=3)
    first = store_of(dataset, tmp_path, log)
    first.append("1", "7", 2.0, 10**10)
    restarted = store_of(dataset, tmp_path, log)
    assert restarted.history("1")[-1].item_id == "7" and restarted.history("1") == first.history("1")


def test_settings_come_from_prefixed_environment_variables(monkeypatch):
    monkeypatch.setenv("RECRANKER_API_KEYS", "one, two,")
    monkeypatch.setenv("RECRANKER_DEFAULT_TASKS", '["pointwise", "listwise"]')
    monkeypatch.setenv("RECRANKER_BACKBONE", "sasrec")
    s = GatewaySettings(_env_file=None)
    assert s.api_keys == ("one", "two") and s.default_tasks == ("pointwise", "listwise") and s.backbone == "sasrec"
    assert str(s.backbone_dir).endswith("ml-100k/backbones/sasrec")


def test_log_lines_are_json_with_the_request_id():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("recranker.unit-test")
    # Its own level: an app built earlier in the run may have set the "recranker" parent to ERROR.
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    token = request_id_var.set("req-42")
    try:
        logger.warning("llm task dropped", extra={"task": "pairwise"})
    finally:
        request_id_var.reset(token)
        logger.removeHandler(handler)
        logger.setLevel(logging.NOTSET)
    entry = json.loads(stream.getvalue())
    assert entry["request_id"] == "req-42" and entry["task"] == "pairwise" and entry["level"] == "warning"


def test_profiles_split_liked_and_disliked_by_the_dataset_scale_in_time_order():
    history = [HistoryEvent("A", 5), HistoryEvent("B", 3), HistoryEvent("C", 1), HistoryEvent("D", 4)]
    profile = build_profile(history, liked_at_least=4, disliked_at_most=2)
    assert [i.title for i in profile.liked] == ["A", "D"] and [i.title for i in profile.disliked] == ["C"]


def test_baseline_parsers_read_free_text_like_the_reference_code():
    assert parse_rating("I think 4.", 5) == 4.0 and parse_rating("rating: 9", 5) is None and parse_rating("great!", 5) is None
    assert parse_yes_no("Yes, because") is True and parse_yes_no("no.") is False and parse_yes_no("maybe") is None


def test_latency_summaries_report_percentiles_and_throughput():
    outcomes = [Outcome(seconds=s / 1000, ok=s != 100) for s in range(1, 101)]
    summary = summarise(outcomes, wall_s=2.0)
    assert summary.requests == 100 and summary.errors == 1 and summary.rps == 50.0
    assert summary.p50_ms == pytest.approx(50.5) and summary.p99_ms == pytest.approx(99.01)


def test_a_cached_history_this_release_cannot_read_is_rebuilt_from_the_store(store):
    async def go():
        cache = MemoryCache()
        histories = HistoryCache(cache, store, "p", "synthetic", ttl_s=60)
        await cache.set(histories.key("0"), json.dumps([{"title": "old format"}]).encode(), 60)
        first = await histories.get("0")
        second = await histories.get("0")
        return first, second

    first, second = run(go())
    assert first.result == "miss" and first.value == store.history("0")
    assert second.result == "hit" and second.value == first.value


def test_the_llm_client_retries_once_when_a_pooled_connection_was_closed_under_it():
    import httpx

    from service.llm.client import LLMError, LLMSettings, VLLMClient

    def server(failures: int):
        calls = {"n": 0}

        def handle(request: httpx.Request) -> httpx.Response:
            calls["n"] += 1
            if calls["n"] <= failures:
                raise httpx.ReadError("connection closed", request=request)
            return httpx.Response(200, json={"choices": [{"message": {"content": "4"}}]})

        return handle, calls

    async def ask(failures: int):
        handle, calls = server(failures)
        client = VLLMClient(LLMSettings(), http=httpx.AsyncClient(base_url="http://llm", transport=httpx.MockTransport(handle)))
        try:
            return await client.generate([{"role": "user", "content": "rate"}]), calls["n"]
        finally:
            await client.aclose()

    assert run(ask(1)) == ("4", 2)
    with pytest.raises(LLMError):
        run(ask(2))  # a server that keeps failing is not retried forever


def test_popularity_counts_likes_as_the_fusion_was_fitted_on_and_events_add_only_likes(tmp_path):
    dataset = synthetic_dataset(n_users=6, n_items=10, per_user=3)
    store = store_of(dataset, tmp_path)
    r = dataset.ratings
    likes = np.bincount(r.item[r.rating >= dataset.scale.liked_at_least], minlength=dataset.n_items)
    assert [store.popularity.get(it.item_id, 0) for it in dataset.items] == likes.tolist()
    item = dataset.items[0].item_id
    before = store.popularity.get(item, 0)
    store.append(dataset.users[0].user_id, item, 1.0, 10**9)
    assert store.popularity.get(item, 0) == before
    store.append(dataset.users[0].user_id, item, 5.0, 10**9 + 1)
    assert store.popularity[item] == before + 1


def test_the_llm_client_rejects_replies_it_cannot_match_to_the_prompts_and_passes_logprobs_on_as_sent():
    import math

    import httpx

    from service.llm.chat_template import ChatTemplate
    from service.llm.client import LLMError, LLMSettings, VLLMClient

    def choice(index, top):
        return {"index": index, "text": "4", "logprobs": {"top_logprobs": [top]}, "message": {"content": "4"}}

    async def ask(reply: dict, batched: bool):
        body = json.dumps(reply).encode()  # NaN and Infinity as Python's json writes them
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body, headers={"content-type": "application/json"}))
        template = ChatTemplate("{% for m in messages %}{{ m.content }}{% endfor %}", {}) if batched else None
        client = VLLMClient(LLMSettings(), http=httpx.AsyncClient(base_url="http://llm", transport=transport), template=template)
        messages = [{"role": "user", "content": "rate"}]
        try:
            if batched:
                return await client.next_token_logprobs_many([messages, messages])
            return await client.next_token_logprobs(messages)
        finally:
            await client.aclose()

    for reply, batched in (
        ({"choices": [choice(0, {"4": -0.1}), choice(0, {"4": -0.2})]}, True),  # two answers to the first prompt, none to the second
        ({"choices": [choice(0, {"4": -0.1}), choice(1, {"4": "high"})]}, True),  # a logprob that is no number
        ({"choices": [choice(0, {"4": -0.1})]}, True),  # one answer for two prompts
    ):
        with pytest.raises(LLMError):
            run(ask(reply, batched))
    chat_choice = {"index": 0, "logprobs": {"content": [{"token": "4", "logprob": -0.1, "top_logprobs": [{"token": "4", "logprob": -0.1}]}]}}
    with pytest.raises(LLMError):
        run(ask({"choices": [chat_choice, {**chat_choice, "index": 1}]}, False))  # two answers to one chat prompt
    got = run(ask({"choices": [choice(0, {"4": float("nan"), "3": -0.5}), choice(1, {"4": float("inf")})]}, True))
    assert math.isnan(got[0]["4"]) and got[0]["3"] == -0.5 and got[1]["4"] == math.inf  # judged by the scoring, not dropped here


def test_the_events_log_skips_a_torn_last_line_and_names_a_bad_line_before_it(tmp_path):
    dataset = synthetic_dataset(n_users=4, n_items=10, per_user=3)
    log = tmp_path / "events.jsonl"
    store_of(dataset, tmp_path, log).append("1", "7", 2.0, 10**10, "e1")
    log.write_text(log.read_text() + '{"user_id": "1", "item_')  # a crash mid-write: never acknowledged
    assert [e.item_id for e in store_of(dataset, tmp_path, log).history("1")][-1] == "7"
    log.write_text('{"user_id": "1"}\n' + log.read_text())
    with pytest.raises(EventsLogError, match=r"events.jsonl, line 1: not an event"):
        store_of(dataset, tmp_path, log)


def test_events_replayed_from_other_replicas_count_once_in_the_log_and_in_memory(tmp_path):
    dataset = synthetic_dataset(n_users=4, n_items=10, per_user=3)
    log = tmp_path / "events.jsonl"
    store = store_of(dataset, tmp_path, log)
    assert store.append_many([StoredEvent("1", "7", 5.0, 10**10, "e1"), StoredEvent("2", "8", 4.0, 10**10, "e2")]) == [True, True]
    assert store.append("1", "7", 5.0, 10**10, "e1") is False
    assert len(log.read_text().splitlines()) == 2
    assert [e.item_id for e in store_of(dataset, tmp_path, log).history("1")].count("7") == 1


def test_the_events_log_is_compacted_at_start_to_each_event_once(tmp_path):
    dataset = synthetic_dataset(n_users=4, n_items=10, per_user=3)
    log = tmp_path / "events.jsonl"
    store_of(dataset, tmp_path, log).append_many([StoredEvent("1", "7", 5.0, 10**10, "e1"), StoredEvent("2", "8", 4.0, 10**10, "e2")])
    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], lines[0], lines[1], lines[0]]) + "\n" + '{"user_id": "3", "ite')  # replayed twice, torn tail
    restarted = store_of(dataset, tmp_path, log)
    assert log.read_text().splitlines() == lines  # rewritten: each event once, the torn line gone
    assert [e.item_id for e in restarted.history("1")].count("7") == 1
