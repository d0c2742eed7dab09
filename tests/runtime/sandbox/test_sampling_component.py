"""ABI 1.2 for components on the real sandbox: `sampling.generate` (options down, the detail or a
sampling-error up) and an exported `realm:tenant/sampler` called by the sampler instance. The guest
is a componentize-py build of the `tenant-sampler` world (no SDK: the generated bindings only);
the services behind `generate` are a fake at the HostServices seam."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import pytest
from sandbox_builds import artifact_cache, cache_dir
from test_sandbox_core import FakeServices

from realm.runtime.sandbox import Sandbox, SandboxLimits, TenantModule, abi
from realm.runtime.sandbox.abi import (
    CandidatePayload,
    ErrorCode,
    GeneratedToken,
    GenerateOptions,
    GenerateParams,
    GenerationDetail,
    HostError,
    SamplerStepInput,
    SequenceStepPayload,
    TokenDecision,
)
from realm.runtime.sandbox.context import InvocationContext
from realm.runtime.sandbox.sampler import SamplerContext, SamplerFailed, SamplerInstance
from realm.tenant_build import wit_dir

# Input "<model>:<constraint>": sampling.generate on that model with that constraint (json-object,
# or a regex), logprobs 2 and its own sampler; emits what came back. Its sampler picks
# candidates[0], or for config "count" answers one decision too few.
APP = """
import json
from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, sampling, sampling_types, types


class WitWorld:
    def run(self) -> None:
        raw = host.input()  # over HTTP, a JSON string
        model, _, arg = (json.loads(raw) if raw.startswith('"') else raw).partition(":")
        constraint = sampling.Constraint_Regex(arg)
        if arg == "json-object":
            constraint = sampling.Constraint_JsonObject()
        params = types.GenerateParams(model, "A person as JSON:", 24, 0.0, 1.0, 0, [], None)
        options = sampling.GenerateOptions(constraint, 2, sampling.SamplerSpec("top", 4), False)
        try:
            d = sampling.generate(params, options)
            tokens = [[t.token, t.logprob, [[c.token, c.logprob, c.text] for c in t.top]] for t in d.tokens]
            out = {"ok": [d.text, d.finish_reason, d.prompt_tokens, d.completion_tokens, tokens]}
        except Err as e:
            out = {"err": [e.value.code.name, e.value.message]}
        host.emit(json.dumps(out))


class Sampler(exports.Sampler):
    def step(self, steps):
        if steps[0].config == "count":
            return []
        return [sampling_types.Decision_Token(s.candidates[0].token) for s in steps]
"""


def build_sampler_component() -> Path:
    """APP built for the tenant-sampler world with componentize-py, cached like sandbox_builds'."""
    h = hashlib.sha256(f"{metadata.version('componentize-py')}\0{APP}".encode())
    for path in sorted(wit_dir().rglob("*.wit")):
        h.update(path.read_bytes())
    out = cache_dir() / f"sampler-app-{h.hexdigest()[:20]}.wasm"
    if out.is_file():
        return out
    with tempfile.TemporaryDirectory(prefix="realm-sampler-app-") as tmp:
        (Path(tmp) / "app.py").write_text(APP)
        env = {k: v for k, v in os.environ.items() if k != "VIRTUAL_ENV"}
        partial = Path(tmp) / "out.wasm"
        cli = Path(sys.executable).parent / "componentize-py"
        args = ["-q", "-d", str(wit_dir()), "-w", "tenant-sampler", "componentize", "app"]
        subprocess.run(
            [str(cli), *args, "-p", tmp, "-o", str(partial)],
            check=True,
            cwd=tmp,
            env=env,
        )
        os.replace(partial, out)
    return out


class Services(FakeServices):
    """FakeServices with generate_with: refuses a regex "bad", else one token per character."""

    def __init__(self) -> None:
        super().__init__()
        self.options: list[GenerateOptions] = []

    async def generate_with(
        self,
        tenant: str,
        params: GenerateParams,
        options: GenerateOptions,
        on_text: Callable[[str], None] | None,
    ) -> GenerationDetail:
        self.options.append(options)
        if options.constraint is not None and options.constraint.value == "bad":
            raise HostError(ErrorCode.INVALID_CONSTRAINT, "regex: bad")
        top = [
            CandidatePayload(token=7, logprob=-0.25, text="{"),
            CandidatePayload(token=8, logprob=-2.0, text="["),
        ]
        return GenerationDetail(
            text="{}",
            finish_reason="stop",
            prompt_tokens=1,
            completion_tokens=1,
            tokens=[GeneratedToken(token=7, logprob=-0.25, top=top)],
        )


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    sb = Sandbox(artifact_cache(), max_workers=2)
    yield sb
    sb.close()


@pytest.fixture(scope="module")
def component(sandbox: Sandbox) -> TenantModule:
    return sandbox.load("acme", build_sampler_component().read_bytes())


async def invoke(sandbox: Sandbox, module: TenantModule, services: Services, input_data: str) -> object:
    ctx = InvocationContext(
        tenant="acme",
        input_data=input_data,
        services=services,
        loop=asyncio.get_running_loop(),
        on_output=print,
    )
    result = await sandbox.invoke(module, ctx, SandboxLimits(memory_mib=256))
    return json.loads(result.output)


async def test_the_component_declares_the_wit_version_it_was_built_against(component: TenantModule) -> None:
    # Built from this tree's WIT, whose interfaces (sampling, 1.2, included) all carry the host's version.
    assert component.abi_version == (abi.ABI_MAJOR, abi.ABI_MINOR)


async def test_sampling_generate_carries_options_and_the_detail(
    sandbox: Sandbox, component: TenantModule
) -> None:
    services = Services()
    out = await invoke(sandbox, component, services, "m:json-object")
    assert out == {"ok": ["{}", "stop", 1, 1, [[7, -0.25, [[7, -0.25, "{"], [8, -2.0, "["]]]]]}
    opts = services.options[0]
    assert (opts.constraint, opts.logprobs, opts.sampler, opts.stream) == (
        opts.constraint.__class__(type="json_object", value=""),
        2,
        opts.sampler.__class__(config="top", top_k=4),
        False,
    )


async def test_a_refused_constraint_is_the_sampling_error_code(
    sandbox: Sandbox, component: TenantModule
) -> None:
    out = await invoke(sandbox, component, Services(), "m:bad")
    assert out == {"err": ["INVALID_CONSTRAINT", "regex: bad"]}


async def test_the_exported_sampler_answers_each_step(sandbox: Sandbox, component: TenantModule) -> None:
    ctx = SamplerContext(tenant="acme", services=Services(), loop=asyncio.get_running_loop())
    inst = SamplerInstance(sandbox, component, SandboxLimits(memory_mib=256, sampler_step_ms=5_000), ctx)
    steps = SamplerStepInput(
        steps=[
            SequenceStepPayload(
                id=i,
                config="top",
                step=0,
                candidates=[CandidatePayload(token=t, logprob=-1.0, text="é")],
                tokens=[],
            )
            for i, t in ((1, 11), (2, 22))
        ]
    )
    decisions = await asyncio.to_thread(inst.step, steps)
    assert decisions == [TokenDecision(kind="token", token=11), TokenDecision(kind="token", token=22)]
    # The same instance again (a component instantiates in tens of milliseconds: once).
    assert await asyncio.to_thread(inst.step, steps) == decisions
    inst.close()


async def test_a_component_answering_too_few_decisions_is_invalid(
    sandbox: Sandbox, component: TenantModule
) -> None:
    ctx = SamplerContext(tenant="acme", services=Services(), loop=asyncio.get_running_loop())
    inst = SamplerInstance(sandbox, component, SandboxLimits(memory_mib=256, sampler_step_ms=5_000), ctx)
    steps = SamplerStepInput(
        steps=[SequenceStepPayload(id=1, config="count", step=0, candidates=[], tokens=[])]
    )
    with pytest.raises(SamplerFailed) as info:
        await asyncio.to_thread(inst.step, steps)
    assert (info.value.code, info.value.message) == ("sampler_invalid", "0 decisions for 1 sequences")
    inst.close()
