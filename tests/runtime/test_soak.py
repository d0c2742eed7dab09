"""A bounded soak of a real `realm serve` (tests/soak.py): good tenants beside flooding, sleeping,
spinning, trapping and memory-bombing ones, for about a minute on loopback. Nothing lost, no 5xx but
documented ones, and the server's RSS after the soak within a quarter of its RSS after the warm-up
(`bench/bench_soak.py --minutes 10` holds a longer one to 10 %)."""

from __future__ import annotations

import httpx
import pytest
import soak

WARMUP_S = 10
SOAK_S = 35


def test_good_tenants_beside_hostile_ones_lose_nothing_and_rss_stays_flat() -> None:
    with soak.soaked_server() as server:
        record = soak.soak(server, warmup_s=WARMUP_S, soak_s=SOAK_S)
    summary = "\n".join(record.summary())
    assert record.problems == [], f"{record.problems}\n{summary}"
    # Every kind of tenant was served, hostile ones included: the soak is not vacuous.
    for kind in soak.KINDS:
        assert sum(record.outcomes[kind.name].values()) > 0, summary
    assert record.latencies["chat"] and record.latencies["invoke"], summary
    assert record.rss_end <= 1.25 * record.rss_warm, summary
    # Four memory bombs' worth of resident memory above the warm-up's, at most, at any moment.
    assert record.rss_max <= record.rss_warm + 16 * soak.MEMORY_CAP_MIB * (1 << 20), summary


def _error(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    body = {"error": {"message": "m", "type": "t", "param": None, "code": code}}
    return httpx.Response(status, json=body, headers=headers)


GOOD = next(k for k in soak.KINDS if k.name == "good")
TRAP = next(k for k in soak.KINDS if k.name == "trap")


@pytest.mark.parametrize(
    ("kind", "what", "response"),
    [
        (GOOD, "chat", _error(500, "internal_error")),
        (TRAP, "invoke", _error(500, "internal_error")),
        (GOOD, "invoke", _error(503, "service_unavailable", {"Retry-After": "1"})),  # not while serving
        (GOOD, "chat", _error(429, "requests_per_minute")),  # no Retry-After
        (GOOD, "invoke", _error(503, "wasm_busy")),  # no Retry-After
        (GOOD, "invoke", _error(422, "wasm_trap")),  # a good tenant's module does not trap
        (GOOD, "chat", httpx.Response(200, json={"choices": [], "usage": {"completion_tokens": 0}})),
        (GOOD, "invoke", httpx.Response(200, json={"text": "", "completion_tokens": 99})),
        (TRAP, "invoke", httpx.Response(500, text="Internal Server Error")),
    ],
)
def test_the_soak_flags_a_broken_rule(kind: soak.Kind, what: str, response: httpx.Response) -> None:
    record = soak.Record()
    soak.check_answer(record, kind, what, response)
    assert len(record.problems) == 1, record.problems


@pytest.mark.parametrize(
    ("kind", "what", "response"),
    [
        (GOOD, "chat", _error(429, "requests_per_minute", {"Retry-After": "2"})),
        (GOOD, "invoke", _error(503, "wasm_busy", {"Retry-After": "1"})),
        (TRAP, "invoke", _error(422, "wasm_trap")),
        (GOOD, "invoke", httpx.Response(200, json={"text": "red", "completion_tokens": 3})),
    ],
)
def test_the_soak_accepts_a_documented_outcome(kind: soak.Kind, what: str, response: httpx.Response) -> None:
    record = soak.Record()
    soak.check_answer(record, kind, what, response)
    assert record.problems == []
