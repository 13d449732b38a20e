"""An accepted event is on disk before the 200 (finding 2 of the reliability review): with the
default settings, an event posted while Redis is down survives a gateway restart, and an event
that cannot be written is a 503 the client can retry, never a 200 that is later lost."""

from __future__ import annotations

from fastapi.testclient import TestClient

from service.gateway.app import create_app
from service.gateway.settings import GatewaySettings
from service.llm.vllm_server import free_port


def settings_for(artifacts, cache_dir, **overrides) -> GatewaySettings:
    # Redis down (nothing listens) and no events log named: the defaults a `make serve` runs with
    return GatewaySettings(_env_file=None, artifacts_dir=artifacts, cache_dir=cache_dir, backbone="random",
                           model_dir=artifacts / "model-chat", llm_url=f"http://127.0.0.1:{free_port()}", llm_timeout_s=1,
                           redis_url=f"redis://127.0.0.1:{free_port()}/0", log_level="WARNING", **overrides)


def rated_items(client: TestClient, user: str) -> list[str]:
    return [e.item_id for e in client.app.state.components.store.history(user)]


def test_an_event_accepted_while_redis_is_down_survives_a_restart(gateway_artifacts, tmp_path):
    settings = settings_for(gateway_artifacts, tmp_path / "cache")
    assert settings.events_log is None and settings.resolved_events_log.is_relative_to(tmp_path / "cache")
    with TestClient(create_app(settings)) as client:
        item = next(i for i in client.app.state.components.store.items if i not in rated_items(client, "7"))
        reply = client.post("/events", json={"events": [{"user_id": "7", "item_id": item, "rating": 5}]})
        assert reply.status_code == 200, reply.text
        assert reply.json()["accepted"] == 1 and reply.json()["shared_with_replicas"] is False
    with TestClient(create_app(settings)) as restarted:
        assert rated_items(restarted, "7").count(item) == 1  # replayed once, not lost, not doubled


def test_an_event_that_cannot_be_written_is_a_503_and_is_not_applied(gateway_artifacts, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the log's folder should be")
    settings = settings_for(gateway_artifacts, tmp_path / "cache", events_log=blocker / "events.jsonl")
    with TestClient(create_app(settings)) as client:
        before = rated_items(client, "7")
        item = next(i for i in client.app.state.components.store.items if i not in before)
        reply = client.post("/events", json={"events": [{"user_id": "7", "item_id": item, "rating": 5}]})
        assert reply.status_code == 503 and reply.json()["error"]["code"] == "events_not_stored"
        assert reply.headers["retry-after"] == "1"
        assert rated_items(client, "7") == before
