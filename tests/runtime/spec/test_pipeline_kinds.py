"""A Pipeline step's kind: exactly one of generate (model and promptTemplate), invoke, tool and retrieve,
every template of it checked like a prompt's, and the pipeline served by at least one generate step."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from realm.runtime.spec.pipeline import MSG_NO_GENERATE, PipelineSpec, PipelineStep

GENERATE = {"name": "g", "model": "chat", "promptTemplate": "{{input}}"}


def spec(*steps: dict[str, Any]) -> PipelineSpec:
    return PipelineSpec.model_validate({"tenant": "acme", "steps": [*steps, GENERATE]})


@pytest.mark.parametrize(
    ("step", "kind"),
    [
        (GENERATE, "generate"),
        ({"name": "s", "invoke": {}}, "invoke"),
        ({"name": "s", "tool": {"server": "tools", "tool": "add"}}, "tool"),
        ({"name": "s", "retrieve": {"collection": "docs", "query": "{{input}}"}}, "retrieve"),
    ],
)
def test_each_kind_is_told_by_what_the_step_sets(step: dict[str, Any], kind: str) -> None:
    assert PipelineStep.model_validate(step).kind == kind


@pytest.mark.parametrize(
    "step",
    [
        {"name": "s"},
        {"name": "s", "model": "chat", "promptTemplate": "p", "invoke": {}},
        {"name": "s", "tool": {"server": "t", "tool": "x"}, "retrieve": {"collection": "c", "query": "q"}},
        {"name": "s", "model": "chat"},
        {"name": "s", "promptTemplate": "p", "invoke": {}},
        {"name": "s", "invoke": {"input": {"": "x"}}},
        {"name": "s", "invoke": {"input": {"k" * 65: "x"}}},
        {"name": "s", "tool": {"server": "Not A Label", "tool": "x"}},
        {"name": "s", "retrieve": {"collection": "c", "query": "q", "k": 21}},
        {"name": "s", "retrieve": {"collection": "c", "query": "q", "scoreThreshold": 2}},
        {"name": "s", "model": "chat@", "promptTemplate": "p"},
        {"name": "s", "model": "chat@V1", "promptTemplate": "p"},
        {
            "name": "s",
            "model": "chat",
            "promptTemplate": "p",
            "responseFormat": {"type": "json_object", "value": "{}"},
        },
        {"name": "s", "model": "chat", "promptTemplate": "p", "responseFormat": {"type": "json_schema"}},
        {
            "name": "s",
            "model": "chat",
            "promptTemplate": "p",
            "responseFormat": {"type": "json_schema", "value": "{"},
        },
        {
            "name": "s",
            "model": "chat",
            "promptTemplate": "p",
            "responseFormat": {"type": "json_schema", "value": "[]"},
        },
        {
            "name": "s",
            "model": "chat",
            "promptTemplate": "p",
            "responseFormat": {"type": "xml", "value": "x"},
        },
    ],
)
def test_a_step_of_no_kind_two_kinds_or_a_bad_field_is_refused(step: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PipelineStep.model_validate(step)


def test_every_template_of_a_step_is_checked_and_read_for_dependencies() -> None:
    find = {"name": "find", "retrieve": {"collection": "docs", "query": "{{input}}"}}
    reads = {"name": "mod", "invoke": {"input": {"q": "{{steps.find.output}}"}}, "dependsOn": ["find"]}
    assert spec(find, reads).steps[1].references() == ["find"]
    with pytest.raises(ValidationError, match="must be listed in dependsOn"):
        spec(find, {**reads, "dependsOn": []})
    unknown = {"name": "sum", "tool": {"server": "t", "tool": "add", "arguments": {"a": "{{secrets}}"}}}
    with pytest.raises(ValidationError, match="unknown placeholder"):
        spec(unknown)


def test_a_pipeline_without_a_generate_step_is_refused() -> None:
    only = {"name": "find", "retrieve": {"collection": "docs", "query": "{{input}}"}}
    with pytest.raises(ValidationError, match=MSG_NO_GENERATE[:40]):
        PipelineSpec.model_validate({"tenant": "acme", "steps": [only]})


def test_a_version_reference_names_its_model() -> None:
    step = PipelineStep.model_validate({**GENERATE, "model": "chat@v2"})
    assert (step.model, step.model_name) == ("chat@v2", "chat")
