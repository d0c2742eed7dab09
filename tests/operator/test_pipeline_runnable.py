"""A Pipeline's Runnable condition: whether a run started now can go ahead, with the first blocker named,
and which Pipelines a Model's readiness change must look at again."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

import kopf

from realm.operator import handlers, world
from realm.operator import reconcile as r
from realm.operator.options import OperatorConfig
from realm.operator.state import MEMO_KEY
from realm.runtime.spec.pipeline import PipelineStatus
from realm.runtime.spec.status import Condition
from realm.runtime.spec.tenant import TenantSpec

NOW = datetime(2026, 1, 1, tzinfo=UTC)
PIPELINE: dict[str, Any] = {
    "tenant": "acme",
    "steps": [
        {"name": "draft", "model": "chat", "promptTemplate": "Answer: {{input}}"},
        {
            "name": "review",
            "model": "notes",
            "dependsOn": ["draft"],
            "promptTemplate": "Improve: {{steps.draft.output}}",
        },
    ],
}
ACME = {"acme": TenantSpec(allowed_models=["chat", "notes"])}
BOTH_READY = {"chat": True, "notes": True}


def status(spec: dict[str, Any] | None = None, **kw: Any) -> PipelineStatus:
    args: dict[str, Any] = {
        "previous": None,
        "generation": 3,
        "now": NOW,
        "raw_spec": PIPELINE if spec is None else spec,
        "tenants": ACME,
        "models": BOTH_READY,
    }
    args.update(kw)
    return r.pipeline_status(**args)


def runnable(st: PipelineStatus) -> Condition:
    return next(c for c in st.conditions if c.type == r.RUNNABLE)


def test_runnable_when_tenant_allows_and_every_model_is_ready() -> None:
    c = runnable(status())
    assert (c.status, c.reason, c.observed_generation) == ("True", "Runnable", 3)
    assert c.message == "Tenant acme may use chat, notes; chat, notes Ready"


def test_a_model_not_ready_blocks_the_run_though_the_pipeline_is_published() -> None:
    st = status(models={"chat": True, "notes": False})
    c = runnable(st)
    assert (c.status, c.reason, c.message) == ("False", r.MODEL_NOT_READY, "notes not Ready")
    published = next(x for x in st.conditions if x.type == r.CONFIG_PUBLISHED)
    assert published.status == "True"


def test_each_blocker_is_named_first_problem_first() -> None:
    assert runnable(status(tenants={})).reason == r.TENANT_NOT_FOUND
    assert runnable(status(tenants={"acme": None})).reason == r.TENANT_NOT_FOUND
    narrow = {"acme": TenantSpec(allowed_models=["chat"])}
    c = runnable(status(tenants=narrow))
    assert (c.reason, c.message) == (r.MODEL_NOT_ALLOWED, "Tenant acme may not use notes")
    missing = runnable(status(models={"chat": True}))
    assert (missing.reason, missing.message) == (r.MODEL_NOT_FOUND, "no Model named notes in this namespace")
    # Not allowed comes before not found: the tenant's own rule is the more fundamental blocker.
    assert runnable(status(tenants=narrow, models={})).reason == r.MODEL_NOT_ALLOWED


def test_a_tool_outside_the_tenants_egress_blocks_the_run() -> None:
    spec = copy.deepcopy(PIPELINE)
    spec["steps"][0]["tools"] = ["search"]
    c = runnable(status(spec))
    assert (c.status, c.reason) == ("False", r.TOOL_NOT_ALLOWED)
    assert "step draft: search" in c.message


def test_an_invalid_spec_is_not_runnable_and_says_why() -> None:
    cyclic = copy.deepcopy(PIPELINE)
    cyclic["steps"][0]["dependsOn"] = ["review"]
    c = runnable(status(cyclic))
    assert (c.status, c.reason) == ("False", r.INVALID)
    assert "cycle" in c.message
    hostile = runnable(status({"tenant": 7, "steps": "x" * 10_000}))
    assert (hostile.status, hostile.reason) == ("False", r.INVALID)


def test_transition_time_is_kept_while_the_answer_stays_and_moves_when_it_changes() -> None:
    first = status(models={"chat": True, "notes": False})
    body = first.model_dump(mode="json", by_alias=True, exclude_none=True)
    later = datetime(2026, 1, 2, tzinfo=UTC)
    same = status(models={"chat": True, "notes": False}, previous=body, now=later)
    assert runnable(same).last_transition_time == NOW
    flipped = status(previous=body, now=later)
    assert (runnable(flipped).status, runnable(flipped).last_transition_time) == ("True", later)


def test_view_reads_the_written_runnable() -> None:
    body = status().model_dump(mode="json", by_alias=True, exclude_none=True)
    v = world.pipeline_view("qa", PIPELINE, {}, body)
    assert v.runnable == "True"
    assert world.pipeline_view("qa", PIPELINE, {}, None).runnable is None
    junk = {"conditions": ["junk", {"type": "Runnable"}]}
    assert world.pipeline_view("qa", PIPELINE, {}, junk).runnable is None


def view(name: str, runnable_: str | None, spec: dict[str, Any] | None = None) -> r.PipelineView:
    return r.PipelineView(name, PIPELINE if spec is None else spec, False, runnable_)


def test_a_model_turning_ready_refreshes_only_the_pipelines_whose_answer_changes() -> None:
    other = {"tenant": "acme", "steps": [{"name": "a", "model": "chat", "promptTemplate": "{{input}}"}]}
    pipelines = [
        view("stale", "False"),  # notes just turned Ready: this one becomes runnable
        view("fresh", "True"),  # already says True
        view("unwritten", None),  # no status yet: its own pass is due
        view("elsewhere", "False", other),  # no step on notes
        r.PipelineView("gone", PIPELINE, True, "False"),  # being deleted
    ]
    assert r.pipelines_to_refresh(pipelines, ACME, BOTH_READY, "notes") == ["stale", "unwritten"]
    # notes stopped being Ready: the ones that said True must say False now.
    not_ready = {"chat": True, "notes": False}
    assert r.pipelines_to_refresh(pipelines, ACME, not_ready, "notes") == ["fresh", "unwritten"]


def test_runnable_is_not_part_of_readys_roll_up_but_agrees_with_it() -> None:
    for models in (BOTH_READY, {"chat": True, "notes": False}, {}):
        st = status(models=models)
        ready = next(c for c in st.conditions if c.type == "Ready")
        assert ready.status == runnable(st).status
    assert r.RUNNABLE not in r.PIPELINE_PARTS


# The Model watch event, through the operator's handler -------------------------------------------------


class PatchingKube:
    """Gets and lists from a fixed world; records status patches."""

    def __init__(self, objects: dict[str, list[dict[str, Any]]]) -> None:
        self.objects = objects
        self.patched: list[tuple[str, str, dict[str, Any]]] = []

    def list(self, kind: str, namespace: str, label_selector: str | None = None) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for o in self.objects.get(kind, [])]

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        found = [o for o in self.objects.get(kind, []) if o["metadata"]["name"] == name]
        return copy.deepcopy(found[0]) if found else None

    def patch_status(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.patched.append((kind, name, patch))
        return patch


def k8s(kind: str, name: str, spec: dict[str, Any], st: dict[str, Any] | None = None) -> dict[str, Any]:
    meta = {"name": name, "namespace": "team-a", "uid": f"uid-{name}", "generation": 1}
    return {"kind": kind, "metadata": meta, "spec": spec, "status": st or {}}


def test_a_model_turning_ready_rewrites_the_runnable_of_the_pipeline_that_waited_for_it() -> None:
    one_model = {"tenant": "acme", "steps": [{"name": "a", "model": "chat", "promptTemplate": "{{input}}"}]}
    waiting = status(one_model, models={"chat": False}).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    ready_now = status(one_model, models={"chat": True}).model_dump(
        mode="json", by_alias=True, exclude_none=True
    )
    model_ready = {"conditions": [{"type": "Ready", "status": "True", "reason": "Ready"}]}
    kube = PatchingKube(
        {
            "Tenant": [k8s("Tenant", "acme", {"allowedModels": ["chat"]})],
            "Model": [k8s("Model", "chat", {}, model_ready)],
            "Pipeline": [
                k8s("Pipeline", "waiting", one_model, waiting),
                k8s("Pipeline", "current", one_model, ready_now),
            ],
        }
    )
    op = handlers.new_operator(kube, OperatorConfig())  # type: ignore[arg-type]
    op.indexes = world.listed(kube, "team-a")  # type: ignore[arg-type]
    # kopf's decorator types the handler as its own callable; the test calls it as kopf would.
    model_event: Any = handlers.model_event
    model_event(namespace="team-a", name="chat", type="MODIFIED", memo=kopf.Memo({MEMO_KEY: op}))
    assert [(kind, name) for kind, name, _ in kube.patched] == [("Pipeline", "waiting")]
    conds = {c["type"]: c for c in kube.patched[0][2]["conditions"]}
    assert (conds["Runnable"]["status"], conds["Runnable"]["reason"]) == ("True", "Runnable")


def _with_steps(*extra: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(PIPELINE)
    spec["steps"] += list(extra)
    return spec


SERVERS = {"mcpServers": [{"name": "tools", "url": "https://tools.example.com/mcp", "tools": ["add"]}]}


def test_a_tool_step_on_a_server_the_tenant_lacks_or_a_tool_it_does_not_allow_blocks_the_run() -> None:
    tenants = {"acme": TenantSpec.model_validate({"allowedModels": ["chat", "notes"], "egress": SERVERS})}
    allowed = {"name": "sum", "tool": {"server": "tools", "tool": "add"}}
    assert runnable(status(_with_steps(allowed), tenants=tenants)).status == "True"
    other_server = {"name": "sum", "tool": {"server": "search", "tool": "add"}}
    c = runnable(status(_with_steps(other_server), tenants=tenants))
    assert (c.reason, "step sum: search" in c.message) == (r.TOOL_NOT_ALLOWED, True)
    other_tool = {"name": "sum", "tool": {"server": "tools", "tool": "secret"}}
    c = runnable(status(_with_steps(other_tool), tenants=tenants))
    assert (c.reason, "step sum: tools/secret" in c.message) == (r.TOOL_NOT_ALLOWED, True)
    outside_own = {"name": "sum", "tool": {"server": "tools", "tool": "add"}, "tools": []}
    c = runnable(status(_with_steps(outside_own), tenants=tenants))
    assert (c.reason, "not in the step's tools" in c.message) == (r.TOOL_NOT_ALLOWED, True)


def test_steps_of_other_kinds_need_no_model_and_a_version_counts_as_its_model() -> None:
    spec = _with_steps(
        {"name": "find", "retrieve": {"collection": "docs", "query": "{{input}}"}},
        {"name": "mod", "invoke": {"input": {"q": "{{steps.find.output}}"}}, "dependsOn": ["find"]},
    )
    spec["steps"][0]["model"] = "chat@v2"
    c = runnable(status(spec))
    assert (c.status, c.message) == ("True", "Tenant acme may use chat, notes; chat, notes Ready")
    c = runnable(status(spec, tenants={"acme": TenantSpec(allowed_models=["notes"])}))
    assert (c.reason, c.message) == (r.MODEL_NOT_ALLOWED, "Tenant acme may not use chat")
