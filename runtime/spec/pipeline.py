"""The Pipeline custom resource: a small DAG of prompt steps run on behalf of one tenant.

A step's prompt template may use `{{input}}` (the pipeline's input) and `{{steps.<name>.output}}` for
any step listed in its `dependsOn`. Listing dependencies explicitly keeps the DAG readable in YAML and
lets the CRD check references with CEL; cycles and template references are checked here (CEL cannot
walk a graph) and reported by the operator as Ready=False with reason Invalid.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from typing import Annotated

from pydantic import ConfigDict, Field, StringConstraints, model_validator

from .cel import cel, validations
from .model import MODEL_NAME_PATTERN
from .status import ResourceStatus, list_map
from .tenant import SpecModel

STEP_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"
MAX_STEPS = 16
MAX_DEPENDS = 8
MAX_STEP_TOOLS = 32
MAX_ATTEMPTS = 5

MSG_UNKNOWN_DEPENDENCY = "dependsOn must name other steps of this pipeline"
MSG_UNKNOWN_OUTPUT = "output must name a step of this pipeline"

PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")
STEP_OUTPUT = re.compile(r"^steps\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.output$")
# The host of an allowedOutboundHosts entry (Spin's scheme://host[:port]); IPv6 without its brackets.
_HOST_OF_PATTERN = re.compile(r"^[a-z*]+://(\[(?P<v6>[^\]]*)\]|(?P<host>[^:/]+))(?::[0-9*]+)?/?$")


def _pattern_host(entry: str) -> str | None:
    if entry.strip() == "*":
        return "*"
    m = _HOST_OF_PATTERN.match(entry.strip().lower())
    if m is None:
        return None
    return m["v6"] if m["v6"] is not None else m["host"]


def tool_allowed(name: str, mcp_servers: Collection[str], allowed_outbound_hosts: Iterable[str]) -> bool:
    """Whether a step's `tools` entry names part of a tenant's egress, as an invocation's X-Realm-Tools
    names it: one of its MCP servers, or a host (lower case, no scheme or port) one of its
    allowedOutboundHosts entries reaches (`api.example.com` under `https://*.example.com:8443`)."""
    low = name.strip().lower()
    if low in mcp_servers:
        return True
    for entry in allowed_outbound_hosts:
        host = _pattern_host(entry)
        if host is None:
            continue
        if host == "*" or host == low or (host.startswith("*.") and low.endswith(host[1:])):
            return True
    return False


class StepCondition(SpecModel):
    """When a step runs: on the text of an earlier step's output (a switch: steps whose conditions
    exclude each other, after a step that classifies)."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel("has(self.contains) != has(self.equals)", "set contains or equals, not both")
        )
    )

    step: str = Field(
        ...,
        pattern=STEP_NAME_PATTERN,
        max_length=32,
        description="The step whose output is tested; it must be in this step's dependsOn or softDependsOn.",
    )
    contains: str | None = Field(
        None, min_length=1, max_length=1024, description="Runs when the output contains this text."
    )
    equals: str | None = Field(
        None,
        max_length=1024,
        description="Runs when the output, without leading and trailing white space, is this text.",
    )
    ignore_case: bool = Field(False, description="Compare without regard to case.")
    negate: bool = Field(False, description="Runs when the test fails instead.")

    @model_validator(mode="after")
    def _one_test(self) -> StepCondition:
        if (self.contains is None) == (self.equals is None):
            raise ValueError("a when sets contains or equals, not both")
        return self

    def holds(self, output: str) -> bool:
        text = output if self.contains is not None else output.strip()
        want = self.contains if self.contains is not None else self.equals or ""
        if self.ignore_case:
            text, want = text.casefold(), want.casefold()
        found = want in text if self.contains is not None else text == want
        return found != self.negate


class StepRetry(SpecModel):
    """How a failed step is tried again: `attempts` in all, waiting `backoffSeconds` before the second,
    doubled before each further one."""

    attempts: int = Field(2, ge=1, le=MAX_ATTEMPTS, description="Attempts in all, the first included.")
    backoff_seconds: float = Field(
        0.5, ge=0, le=60, description="Wait before the second attempt; doubled before each further one."
    )


class PipelineStep(SpecModel):
    """One model call whose prompt is rendered from the input and earlier steps' outputs."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.dependsOn) || !self.dependsOn.exists(d, d == self.name)",
                "a step cannot depend on itself",
            )
        )
    )

    name: str = Field(
        ..., pattern=STEP_NAME_PATTERN, max_length=32, description="Step name, unique in the pipeline."
    )
    model: str = Field(
        ...,
        pattern=MODEL_NAME_PATTERN,
        max_length=42,
        description="Name of a Model in the namespace that the tenant may use.",
    )
    prompt_template: str = Field(
        ...,
        min_length=1,
        max_length=16384,
        description="Prompt with {{input}} and {{steps.<name>.output}} placeholders.",
    )
    max_tokens: int = Field(256, ge=1, le=32768, description="Completion tokens this step may generate.")
    depends_on: list[str] = Field(
        default_factory=list,
        max_length=MAX_DEPENDS,
        description="Steps that must succeed first; a template may read their outputs. If one fails, "
        "this step does not run and the run fails.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    soft_depends_on: list[str] = Field(
        default_factory=list,
        max_length=MAX_DEPENDS,
        description="Steps that must end first, successfully or not: if one fails (or is skipped), this "
        "step still runs, reading its output as empty text, and the run goes on. A template may read "
        "their outputs too.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    timeout_seconds: float | None = Field(
        None,
        ge=0.1,
        le=3600,
        description="Longest one attempt of this step may take; past it the attempt fails with "
        "deadline_exceeded (and is retried per retry). No limit of its own when absent (the pipeline's "
        "timeoutSeconds still applies).",
    )
    when: StepCondition | None = Field(
        None,
        description="Run only if this test on an earlier step's output holds; otherwise the step is "
        "Omitted, and so are the steps that dependOn it (those that softDependOn it read its output as "
        "empty). Steps whose `when`s exclude each other are a switch.",
    )
    retry: StepRetry | None = Field(
        None,
        description="Attempts of this step after a failure that may pass (deadline_exceeded, busy, "
        "quota_exceeded, unavailable, engine_failed, not_ready); a refusal that cannot pass "
        "(model_not_allowed, an invalid request) is never retried. One attempt when absent.",
    )

    tools: list[Annotated[str, StringConstraints(min_length=1, max_length=253)]] | None = Field(
        None,
        max_length=MAX_STEP_TOOLS,
        description="What this step's invocation may reach, as an invocation's X-Realm-Tools header names "
        "it: the Tenant's MCP servers (egress.mcpServers[].name) and hosts its egress.allowedOutboundHosts "
        "reach (api.example.com: no scheme, no port). Must be within the Tenant's egress (checked at "
        "reconcile: Ready=False, reason ToolNotAllowed, otherwise). Absent: all of the Tenant's egress; "
        "[]: none. Carried into the runtime config as the step's tool restriction; the runtime runs only "
        "generate steps today, which reach no tools, so it is validated and published, not enforced.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    def references(self) -> list[str]:
        """Step names the template reads, in order of first use."""
        out: list[str] = []
        for expr in PLACEHOLDER.findall(self.prompt_template):
            m = STEP_OUTPUT.match(expr)
            if m and m.group(1) not in out:
                out.append(m.group(1))
        return out


class PipelineSpec(SpecModel):
    """Steps run for one tenant; a step starts when the steps it depends on have finished."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.steps.all(s, !has(s.dependsOn) || "
                "s.dependsOn.all(d, self.steps.exists(t, t.name == d)))",
                MSG_UNKNOWN_DEPENDENCY,
            ),
            cel(
                "self.steps.all(s, !has(s.softDependsOn) || "
                "s.softDependsOn.all(d, self.steps.exists(t, t.name == d)))",
                MSG_UNKNOWN_DEPENDENCY,
            ),
            cel("!has(self.output) || self.steps.exists(s, s.name == self.output)", MSG_UNKNOWN_OUTPUT),
        )
    )

    tenant: str = Field(
        ...,
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="Name of the Tenant (same namespace) the pipeline runs as; its quotas and models apply.",
    )
    steps: list[PipelineStep] = Field(
        ...,
        min_length=1,
        max_length=MAX_STEPS,
        description="The steps, keyed by name.",
        json_schema_extra=list_map("name"),
    )
    output: str | None = Field(
        None, max_length=32, description="Step whose output the pipeline returns; the last step when absent."
    )
    timeout_seconds: float | None = Field(
        None,
        ge=0.1,
        le=3600,
        description="Longest a run may take, retries included; past it its running steps are cancelled "
        "and the run fails with deadline_exceeded. No limit of its own when absent.",
    )

    @model_validator(mode="after")
    def _graph(self) -> PipelineSpec:
        names = [s.name for s in self.steps]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate step names: {', '.join(dupes)}")
        for s in self.steps:
            if s.name in s.depends_on:
                raise ValueError(f"step {s.name}: a step cannot depend on itself")
            if s.name in s.soft_depends_on:
                raise ValueError(f"step {s.name}: a step cannot depend on itself")
            unknown = sorted((set(s.depends_on) | set(s.soft_depends_on)) - set(names))
            if unknown:
                raise ValueError(f"step {s.name}: {MSG_UNKNOWN_DEPENDENCY} (unknown: {', '.join(unknown)})")
            if s.when is not None and s.when.step not in (*s.depends_on, *s.soft_depends_on):
                raise ValueError(
                    f"step {s.name}: when tests {s.when.step}, which must be in dependsOn or softDependsOn"
                )
            both = sorted(set(s.depends_on) & set(s.soft_depends_on))
            if both:
                raise ValueError(f"step {s.name}: {', '.join(both)} in both dependsOn and softDependsOn")
            for expr in PLACEHOLDER.findall(s.prompt_template):
                if expr != "input" and not STEP_OUTPUT.match(expr):
                    raise ValueError(
                        f"step {s.name}: unknown placeholder {{{{{expr}}}}}; "
                        "use {{input}} or {{steps.<name>.output}}"
                    )
            missing = [r for r in s.references() if r not in s.depends_on and r not in s.soft_depends_on]
            if missing:
                raise ValueError(
                    f"step {s.name}: the template reads {', '.join(missing)}, "
                    "which must be listed in dependsOn or softDependsOn"
                )
        if self.output is not None and self.output not in names:
            raise ValueError(f"{MSG_UNKNOWN_OUTPUT} (got {self.output})")
        self.order()  # raises on cycles
        return self

    def order(self) -> list[str]:
        """Step names in a run order (dependencies first; ties keep the declared order)."""
        deps = {s.name: set(s.depends_on) | set(s.soft_depends_on) for s in self.steps}
        done: list[str] = []
        while len(done) < len(deps):
            ready = [n for n in deps if n not in done and deps[n] <= set(done)]
            if not ready:
                stuck = sorted(n for n in deps if n not in done)
                raise ValueError(f"dependsOn forms a cycle among: {', '.join(stuck)}")
            done.append(ready[0])
        return done

    def unknown_tools(
        self, mcp_servers: Collection[str], allowed_outbound_hosts: Iterable[str]
    ) -> dict[str, list[str]]:
        """Per step (those with any), the `tools` entries outside the tenant's egress (`tool_allowed`),
        in declared order."""
        hosts = list(allowed_outbound_hosts)
        out: dict[str, list[str]] = {}
        for s in self.steps:
            missing = [t for t in s.tools or [] if not tool_allowed(t, mcp_servers, hosts)]
            if missing:
                out[s.name] = missing
        return out

    def output_step(self) -> str:
        return self.output if self.output is not None else self.steps[-1].name


class PipelineStatus(ResourceStatus):
    """Whether the pipeline can run now (never whether it ran: runs do not write this status).

    Runnable is True when the spec is valid, its Tenant exists and allows every step's model and tool,
    and every step's Model exists and is Ready; otherwise False with the first blocker as reason (Invalid,
    TenantNotFound, ModelNotAllowed, ToolNotAllowed, ModelNotFound, ModelNotReady) and message. Ready is
    rolled up from SpecValid, ReferencesResolved and ConfigPublished and says the same."""

    step_order: list[str] = Field(default_factory=list, description="The order the steps run in.")
    step_count: int = Field(0, ge=0, description="Number of steps.")
