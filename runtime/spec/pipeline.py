"""The Pipeline custom resource: a small DAG of steps run on behalf of one tenant.

A step is one of four kinds: generate (a model call: `model` and `promptTemplate`), invoke (the tenant's
module), tool (one MCP tool call) or retrieve (a search of one of the tenant's vector collections). Its
templates may use `{{input}}` (the pipeline's input) and `{{steps.<name>.output}}` for any step listed in
its `dependsOn` or `softDependsOn`. Listing dependencies explicitly keeps the DAG readable in YAML and
lets the CRD check references with CEL; cycles and template references are checked here (CEL cannot
walk a graph) and reported by the operator as Ready=False with reason Invalid.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable
from typing import Annotated, Literal

from pydantic import ConfigDict, Field, StringConstraints, field_validator, model_validator

from .cel import cel, validations
from .model import MODEL_NAME_PATTERN, VERSION_NAME_PATTERN
from .status import ResourceStatus, list_map
from .tenant import SpecModel

STEP_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$"
MAX_STEPS = 16
MAX_DEPENDS = 8
MAX_STEP_TOOLS = 32
MAX_ATTEMPTS = 5
MAX_TEMPLATE_FIELDS = 16
MAX_RETRIEVE_K = 20
# A Model, or one version of it (`name@version`, as a request's `model` names one).
MODEL_REF_PATTERN = MODEL_NAME_PATTERN[:-1] + "(@" + VERSION_NAME_PATTERN[1:-1] + ")?$"
STEP_KINDS = ("generate", "invoke", "tool", "retrieve")

MSG_UNKNOWN_DEPENDENCY = "dependsOn must name other steps of this pipeline"
MSG_UNKNOWN_OUTPUT = "output must name a step of this pipeline"
# Runs are served by the pods of the pipeline's models (where the operator publishes it).
MSG_NO_GENERATE = "a pipeline needs at least one generate step (a step with a model): its models' pods run it"

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


# Keys are checked by `_keys` (a constraint on keys is no structural schema a CRD may carry).
TemplateMap = dict[str, Annotated[str, StringConstraints(max_length=16384)]]
MAX_KEY_CHARS = 64


def _keys(values: dict[str, str]) -> dict[str, str]:
    bad = [k for k in values if not 1 <= len(k) <= MAX_KEY_CHARS]
    if bad:
        raise ValueError(f"keys must be 1-{MAX_KEY_CHARS} characters (got {bad[0][:80]!r})")
    return values


class InvokeStep(SpecModel):
    """Run the tenant's current WebAssembly module once; the step's output is the module's output."""

    input: TemplateMap = Field(
        default_factory=dict,
        max_length=MAX_TEMPLATE_FIELDS,
        description="The module's input: a JSON object with these keys, each value a template rendered "
        "to a string ({{input}}, {{steps.<name>.output}}).",
    )

    _input_keys = field_validator("input")(_keys)


class ToolStep(SpecModel):
    """Call one tool of one of the tenant's MCP servers; the step's output is the result's text."""

    server: str = Field(
        ...,
        pattern=r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$",
        description="One of the Tenant's egress.mcpServers (by name).",
    )
    tool: str = Field(
        ...,
        min_length=1,
        max_length=128,
        description="The tool's name; the server's `tools` in the Tenant must allow it.",
    )
    arguments: TemplateMap = Field(
        default_factory=dict,
        max_length=MAX_TEMPLATE_FIELDS,
        description="The tool's arguments: string values, each a template.",
    )

    _argument_keys = field_validator("arguments")(_keys)


class RetrieveStep(SpecModel):
    """Search one of the tenant's vector collections by text; the step's output is the texts of the hits,
    best first, separated by blank lines (what a prompt's context wants)."""

    collection: str = Field(
        ...,
        min_length=1,
        max_length=256,
        description="The collection's id (vs_...) or its name; a name must be held by exactly one of the "
        "tenant's collections when the step runs.",
    )
    query: str = Field(..., min_length=1, max_length=16384, description="The query text, a template.")
    k: int = Field(4, ge=1, le=MAX_RETRIEVE_K, description="Hits at most.")
    score_threshold: float | None = Field(
        None, ge=-1, le=1, description="Leave out hits scoring below this (cosine similarity)."
    )


class StepConstraint(SpecModel):
    """What a generate step's output must match, as the ABI's generate constraint names it."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "self.type == 'json_object' ? !has(self.value) : has(self.value)",
                "json_object takes no value; json_schema, regex, lark and gbnf take one",
            )
        )
    )

    type: Literal["json_object", "json_schema", "regex", "lark", "gbnf"] = Field(
        ..., description="json_object (any JSON object), json_schema, regex, lark or gbnf."
    )
    value: str | None = Field(
        None,
        min_length=1,
        max_length=64 * 1024,
        description="The JSON schema (as JSON text), the regular expression or the grammar.",
    )

    @model_validator(mode="after")
    def _value_fits(self) -> StepConstraint:
        if (self.type == "json_object") != (self.value is None):
            raise ValueError("json_object takes no value; json_schema, regex, lark and gbnf take one")
        if self.type == "json_schema":
            try:
                schema = json.loads(self.value or "")
            except ValueError as e:
                raise ValueError(f"a json_schema value must be JSON: {e}") from e
            if not isinstance(schema, dict):
                raise ValueError("a json_schema value must be a JSON object")
        return self


class StepRetry(SpecModel):
    """How a failed step is tried again: `attempts` in all, waiting `backoffSeconds` before the second,
    doubled before each further one."""

    attempts: int = Field(2, ge=1, le=MAX_ATTEMPTS, description="Attempts in all, the first included.")
    backoff_seconds: float = Field(
        0.5, ge=0, le=60, description="Wait before the second attempt; doubled before each further one."
    )


class PipelineStep(SpecModel):
    """One step, of one kind: generate (`model` and `promptTemplate`), `invoke`, `tool` or `retrieve`;
    its templates are rendered from the input and earlier steps' outputs."""

    model_config = ConfigDict(
        json_schema_extra=validations(
            cel(
                "!has(self.dependsOn) || !self.dependsOn.exists(d, d == self.name)",
                "a step cannot depend on itself",
            ),
            cel(
                "(has(self.model) ? 1 : 0) + (has(self.invoke) ? 1 : 0) + (has(self.tool) ? 1 : 0) "
                "+ (has(self.retrieve) ? 1 : 0) == 1",
                "a step sets exactly one of model (a generate step), invoke, tool and retrieve",
            ),
            cel(
                "has(self.model) == has(self.promptTemplate)",
                "a generate step sets model and promptTemplate; other kinds set neither",
            ),
        )
    )

    name: str = Field(
        ..., pattern=STEP_NAME_PATTERN, max_length=32, description="Step name, unique in the pipeline."
    )
    model: str | None = Field(
        None,
        pattern=MODEL_REF_PATTERN,
        max_length=63,
        description="A generate step's model: a Model in the namespace that the tenant may use, or one "
        "of its versions (name@version).",
    )
    prompt_template: str | None = Field(
        None,
        min_length=1,
        max_length=16384,
        description="A generate step's prompt, with {{input}} and {{steps.<name>.output}} placeholders.",
    )
    max_tokens: int = Field(
        256, ge=1, le=32768, description="Completion tokens a generate step may generate."
    )
    temperature: float = Field(
        0.0, ge=0, le=2, description="A generate step's sampling temperature; 0 is greedy."
    )
    top_p: float = Field(1.0, ge=0.01, le=1, description="A generate step's nucleus sampling mass.")
    top_k: int = Field(0, ge=0, le=1000, description="A generate step's top-k sampling; 0 is off.")
    seed: int | None = Field(None, ge=0, le=2**31 - 1, description="A generate step's sampling seed.")
    response_format: StepConstraint | None = Field(
        None,
        description="Constrain a generate step's output (JSON, a JSON schema, a regex or a grammar), as "
        "the ABI's generate does (docs/sampling.md). Only on a model this pod serves: a constrained step "
        "on a model another pod serves fails with model_not_served_here.",
    )
    invoke: InvokeStep | None = Field(None, description="Run the tenant's module (an invoke step).")
    tool: ToolStep | None = Field(None, description="Call one MCP tool (a tool step).")
    retrieve: RetrieveStep | None = Field(
        None, description="Search one of the tenant's vector collections (a retrieve step)."
    )
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
        "[]: none. Enforced at run time: an invoke step's module reaches only these, and a tool step's "
        "server must be among them.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )

    @model_validator(mode="after")
    def _one_kind(self) -> PipelineStep:
        given = (self.model, self.invoke, self.tool, self.retrieve)
        kinds = [k for k, v in zip(STEP_KINDS, given, strict=True) if v is not None]
        if len(kinds) != 1:
            raise ValueError(
                f"step {self.name}: set exactly one of model (a generate step), invoke, tool and retrieve"
                + (f" (got {', '.join(kinds)})" if kinds else "")
            )
        if (self.model is None) != (self.prompt_template is None):
            raise ValueError(
                f"step {self.name}: a generate step sets model and promptTemplate; other kinds set neither"
            )
        return self

    @property
    def kind(self) -> str:
        """generate, invoke, tool or retrieve."""
        if self.invoke is not None:
            return "invoke"
        if self.tool is not None:
            return "tool"
        if self.retrieve is not None:
            return "retrieve"
        return "generate"

    @property
    def model_name(self) -> str | None:
        """The Model a generate step uses (its `model` without a version); None for other kinds."""
        return None if self.model is None else self.model.partition("@")[0]

    def templates(self) -> list[str]:
        """Every template of the step, whatever its kind."""
        if self.invoke is not None:
            return list(self.invoke.input.values())
        if self.tool is not None:
            return list(self.tool.arguments.values())
        if self.retrieve is not None:
            return [self.retrieve.query]
        return [self.prompt_template or ""]

    def references(self) -> list[str]:
        """Step names the templates read, in order of first use."""
        out: list[str] = []
        for template in self.templates():
            for expr in PLACEHOLDER.findall(template):
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
            cel("self.steps.exists(s, has(s.model))", MSG_NO_GENERATE),
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
            for expr in (e for t in s.templates() for e in PLACEHOLDER.findall(t)):
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
        if not any(s.model is not None for s in self.steps):
            raise ValueError(MSG_NO_GENERATE)
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
            if s.tool is not None and s.tool.server not in mcp_servers:
                missing.append(s.tool.server)
            elif s.tool is not None and s.tools is not None and s.tool.server not in s.tools:
                missing.append(f"{s.tool.server} (not in the step's tools)")
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
