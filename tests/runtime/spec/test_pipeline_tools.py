"""A Pipeline step's `tools`: the names it may use and which of them a tenant's egress knows."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from realm.runtime.spec.pipeline import MAX_STEP_TOOLS, PipelineSpec, egress_tool_names


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


def test_egress_names_are_server_names_host_entries_and_their_hosts() -> None:
    names = egress_tool_names(["demo"], ["https://API.example.com:8443", "http://[::1]:8080/", "*"])
    assert names == {
        "demo",
        "https://API.example.com:8443",
        "api.example.com",
        "http://[::1]:8080/",
        "[::1]",
        "*",
    }


def test_unknown_tools_names_each_step_and_entry() -> None:
    known = egress_tool_names(["demo"], ["http://127.0.0.1:8080"])
    s = spec(["demo", "127.0.0.1"], ["demo", "search", "api.other.com"], None)
    assert s.unknown_tools(known) == {"s1": ["search", "api.other.com"]}


def test_a_step_names_at_most_max_step_tools() -> None:
    with pytest.raises(ValidationError, match="at most"):
        spec([f"t{i}" for i in range(MAX_STEP_TOOLS + 1)])


def test_an_empty_tool_name_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 1"):
        spec([""])
