"""A Pipeline step's `tools`: the names it may use and which of them a tenant's egress knows."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from realm.runtime.spec.pipeline import MAX_STEP_TOOLS, PipelineSpec, tool_allowed


def spec(*tools: list[str] | None) -> PipelineSpec:
    steps: list[dict[str, Any]] = []
    for i, t in enumerate(tools):
        step: dict[str, Any] = {"name": f"s{i}", "model": "chat", "promptTemplate": "{{input}}"}
        if t is not None:
            step["tools"] = t
        steps.append(step)
    return PipelineSpec.model_validate({"tenant": "acme", "steps": steps})


def test_tools_absent_is_none_and_empty_is_kept() -> None:
    s = spec(None, [])
    assert [st.tools for st in s.steps] == [None, []]


HOSTS = ["https://API.example.com:8443", "http://[::1]:8080/", "https://*.corp.example"]


@pytest.mark.parametrize(
    "name", ["demo", "api.example.com", "API.example.com", "::1", "search.corp.example", "a.b.corp.example"]
)
def test_servers_and_hosts_the_egress_reaches_are_allowed(name: str) -> None:
    assert tool_allowed(name, {"demo"}, HOSTS)


@pytest.mark.parametrize(
    "name",
    ["other", "https://api.example.com:8443", "example.com", "corp.example", "[::1]", "evilcorp.example"],
)
def test_anything_else_is_not(name: str) -> None:
    assert not tool_allowed(name, {"demo"}, HOSTS)


def test_a_wildcard_egress_reaches_every_host() -> None:
    assert tool_allowed("anything.example", set(), ["*"])


def test_unknown_tools_names_each_step_and_entry() -> None:
    s = spec(["demo", "127.0.0.1"], ["demo", "search", "api.other.com"], None)
    assert s.unknown_tools({"demo"}, ["http://127.0.0.1:8080"]) == {"s1": ["search", "api.other.com"]}


def test_a_step_names_at_most_max_step_tools() -> None:
    with pytest.raises(ValidationError, match="at most"):
        spec([f"t{i}" for i in range(MAX_STEP_TOOLS + 1)])


def test_an_empty_tool_name_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 1"):
        spec([""])
