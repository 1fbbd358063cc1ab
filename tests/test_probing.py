"""`cbctl.probing`: one probe through the breaker, as data (the library under `cbctl probe`)."""

from __future__ import annotations

from typing import Any

import pytest

from cbctl.config import Dependency
from cbctl.probing import probe_once, probe_round
from cbctl.standins import LlamaCppStandin
from cbctl.state import BreakerConfig
from cbctl.stores import MemoryStore


def llamacpp(url: str, name: str = "llamacpp") -> Dependency:
    return Dependency(name, "llamacpp", url, 1.0, BreakerConfig(failure_threshold=2, timeout=60))


def test_a_healthy_probe_is_a_success_with_the_closed_circuit() -> None:
    with LlamaCppStandin() as standin:
        attempt = probe_once(llamacpp(standin.url), MemoryStore(), number=3)
    assert (attempt.outcome, attempt.ok, attempt.state, attempt.exit_code) == (
        "success",
        True,
        "closed",
        0,
    )
    assert attempt.attempt == 3
    assert attempt.error is None
    assert attempt.latency_ms > 0


def test_failures_open_the_circuit_and_then_the_dependency_is_not_contacted() -> None:
    store = MemoryStore()
    with LlamaCppStandin(mode="loading") as standin:
        dep = llamacpp(standin.url)
        first, second = probe_once(dep, store), probe_once(dep, store)
        served = standin.requests_served
        rejected = probe_once(dep, store)
        assert standin.requests_served == served
    assert (first.outcome, first.state, first.failure_count) == ("failure", "closed", 1)
    assert "Loading model" in (first.error or "")
    assert (second.outcome, second.state, second.exit_code) == ("failure", "open", 1)
    assert (rejected.outcome, rejected.reason) == ("rejected", "circuit_open")
    assert rejected.exit_code == 3
    assert rejected.retry_after is not None
    assert 0 < rejected.retry_after <= 60


def test_a_round_probes_every_dependency_and_keeps_their_order() -> None:
    with LlamaCppStandin() as up, LlamaCppStandin(mode="down") as down:
        deps = [llamacpp(up.url, "a"), llamacpp(down.url, "b")]
        results = probe_round(deps, MemoryStore())
    assert [(r.dependency, r.outcome) for r in results] == [("a", "success"), ("b", "failure")]
    assert set(results[0].as_json()) >= {
        "dependency",
        "ok",
        "outcome",
        "state",
        "latency_ms",
        "error",
        "failure_count",
        "success_count",
    }


class _Ticks:
    """A perf_counter that moves only when told to, standing in for `time` in cbctl.probing."""

    def __init__(self) -> None:
        self.now = 100.0

    def perf_counter(self) -> float:
        return self.now


def test_latency_is_the_check_alone_not_client_set_up_nor_recording_the_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import cbctl.probes
    from cbctl import probing
    from cbctl.probes import llamacpp as module

    ticks = _Ticks()
    store = MemoryStore()
    monkeypatch.setattr(probing, "time", ticks)

    def slow_set_up(dep: Dependency) -> None:
        ticks.now += 1000.0  # building a client: not the dependency's time

    def check(dep: Dependency, timeout: float | None = None) -> str:
        ticks.now += 0.004  # the round trip
        return "200 ok"

    record_success = store.record_success

    def slow_record(*args: Any) -> Any:
        ticks.now += 500.0  # the state file: not the dependency's time either
        return record_success(*args)

    monkeypatch.setattr(module, "set_up", slow_set_up)
    monkeypatch.setattr(cbctl.probes, "check", check)
    monkeypatch.setattr(store, "record_success", slow_record)
    attempt = probe_once(llamacpp("http://127.0.0.1:9"), store)
    assert attempt.outcome == "success"
    assert attempt.latency_ms == pytest.approx(4.0)


def test_the_http_client_is_built_once_per_process_and_shared_by_probes() -> None:
    from cbctl.probes._httpx import shared_client

    with LlamaCppStandin() as standin:
        dep = llamacpp(standin.url)
        probe_once(dep, MemoryStore())
        client = shared_client(False)
        probe_once(dep, MemoryStore())
    assert shared_client(False) is client
    assert not client.is_closed
