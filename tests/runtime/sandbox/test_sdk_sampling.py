"""The Python SDK's ABI 1.2 (sdk/python/realm_tenant): generate_with, constraints, the Sampler base
class, and its examples' logic on plain CPython through realm_tenant.testing.FakeHost (the SDK's
own local backend, what tenant authors test with). The built components against the real runtime
are tests/runtime/api/test_invoke_sampling.py's."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from realm.tenant_build import WIT_SAMPLER_WORLD, WIT_WORLD, python_world

ROOT = Path(__file__).resolve().parents[3]
SDK = ROOT / "sdk" / "python"
EXAMPLES = SDK / "examples"

if str(SDK) not in sys.path:
    sys.path.insert(0, str(SDK))

import realm_tenant as rt  # noqa: E402
from realm_tenant.testing import FakeHost  # noqa: E402


def load_app(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        f"realm_sampling_example_{name}", EXAMPLES / name / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def words(*texts: str) -> list[rt.Candidate]:
    """Candidates best first, token ids 100, 101, ... by rank."""
    return [rt.Candidate(100 + i, -0.1 * (i + 1), t) for i, t in enumerate(texts)]


def test_constraint_helpers_make_the_wit_cases() -> None:
    assert rt.json_schema({"type": "object"}) == rt.Constraint("json_schema", '{"type": "object"}')
    assert rt.json_schema('{"type":"object"}').value == '{"type":"object"}'
    assert rt.json_object() == rt.Constraint("json_object", "")
    assert rt.regex("[0-9]+") == rt.Constraint("regex", "[0-9]+")
    assert rt.lark('start: "a"').kind == "lark" and rt.gbnf('root ::= "a"').kind == "gbnf"


def test_decisions() -> None:
    assert rt.token(5) == rt.Decision("token", (5,))
    assert rt.allow([1, 2]) == rt.Decision("allow", (1, 2))
    assert rt.force(iter([3, 4])) == rt.Decision("force", (3, 4))
    assert rt.ban([7]) == rt.Decision("bias", bias=((7, rt.BAN),))
    # -inf cannot cross a JSON or WIT boundary as such: it is the ban value
    assert rt.bias({7: float("-inf"), 8: 1.5}) == rt.Decision("bias", bias=((7, rt.BAN), (8, 1.5)))
    assert (rt.sample().kind, rt.stop().kind) == ("sample", "stop")


def test_an_app_with_a_sampler_is_built_for_the_sampler_world(tmp_path: Path) -> None:
    for name, world in [
        ("lipogram", WIT_SAMPLER_WORLD),
        ("top_sampler", WIT_SAMPLER_WORLD),
        ("json_extract", WIT_WORLD),
    ]:
        assert python_world(EXAMPLES / name / "app.py") == world, name
    app = tmp_path / "app.py"
    app.write_text("import realm_tenant as rt\n\n# class Sampler is not here\nS = 1\n")
    assert python_world(app) == WIT_WORLD


def test_top_sampler_takes_the_first_candidate_as_greedy_does() -> None:
    app = load_app("top_sampler")
    vocab = words(" Once", " upon", " a", " time")
    host = FakeHost(
        input={"prompt": "Tell", "max_tokens": 3},
        sampler=app.Sampler,
        candidates=lambda p, toks: vocab[len(toks) :] or [],
    )
    result = host.run(app.WitWorld)
    assert result.ok, result.error
    assert result.json() == {"text": " Once upon a", "completion_tokens": 3, "finish_reason": "length"}
    [options] = host.options
    assert options.sampler == rt.SamplerSpec("", 1)
    builtin = FakeHost(input={"prompt": "Tell", "builtin": True}, generate=lambda p: " Once upon")
    assert builtin.run(app.WitWorld).json()["text"] == " Once upon"
    assert builtin.options[0].sampler is None


def test_lipogram_skips_every_candidate_with_an_e() -> None:
    app = load_app("lipogram")
    steps: list[list[rt.Candidate]] = [
        words(" The", " A"),
        words(" cat", " dog"),
        words(" sleeps", " naps", " sat"),
        words(" here", " there"),  # none qualifies: the sequence ends
    ]
    host = FakeHost(
        input={"prompt": "Write"}, sampler=app.Sampler, candidates=lambda p, toks: steps[len(toks)]
    )
    result = host.run(app.WitWorld)
    assert result.json() == {"text": " A cat naps", "completion_tokens": 3, "finish_reason": "stop"}
    assert host.options[0].sampler == rt.SamplerSpec("eE", 64)


def test_json_rule_keeps_sevens_out_and_sends_the_schema() -> None:
    app = load_app("json_rule")
    steps = [words('{"numbers":['), words("7", "2"), words(",", "]"), words("17", "3"), words("]}")]
    host = FakeHost(
        input={}, sampler=app.Sampler, candidates=lambda p, toks: steps[len(toks)] if len(toks) < 5 else []
    )
    result = host.run(app.WitWorld)
    assert result.ok, result.error
    assert result.json()["data"] == {"numbers": [2, 3]}
    [options] = host.options
    assert options.constraint is not None and json.loads(options.constraint.value)["required"] == ["numbers"]
    assert options.sampler == rt.SamplerSpec("7", 32)


def test_json_rule_bans_the_step_when_every_candidate_has_a_seven() -> None:
    app = load_app("json_rule")
    [decision] = app.Sampler().decide([rt.SequenceStep(1, "7", 0, words("7", "77"), ())])
    assert decision == rt.ban([100, 101])


def test_json_extract_sends_its_schema_and_parses_the_output() -> None:
    app = load_app("json_extract")
    host = FakeHost(
        input={"text": "Ann is 41 and lives in Oslo."},
        generate=lambda p: '{"name":"Ann","age":41,"city":"Oslo"}',
    )
    result = host.run(app.WitWorld)
    assert result.json()["data"] == {"name": "Ann", "age": 41, "city": "Oslo"}
    [options] = host.options
    assert options.constraint is not None and options.constraint.kind == "json_schema"
    assert host.calls[0].max_tokens == 128


def test_a_sampled_generation_without_a_sampler_is_a_sampler_trap() -> None:
    class NoSampler(rt.Tenant):
        def main(self) -> None:
            try:
                rt.generate_with(
                    rt.GenerateParams("smollm2-135m-instruct", "x"),
                    rt.GenerateOptions(sampler=rt.SamplerSpec()),
                )
            except rt.RealmError as e:
                rt.emit(e.code)

    assert FakeHost(candidates=lambda p, t: words("a")).run(NoSampler).output == "sampler-trap"


def test_a_sampler_that_raises_or_answers_wrongly_fails_its_generation() -> None:
    class Raises(rt.Sampler):
        def decide(self, steps: Sequence[rt.SequenceStep]) -> list[rt.Decision]:
            raise ZeroDivisionError("boom")

    class TwoForOne(rt.Sampler):
        def decide(self, steps: Sequence[rt.SequenceStep]) -> list[rt.Decision]:
            return [rt.sample(), rt.sample()]

    class Caller(rt.Tenant):
        def main(self) -> None:
            try:
                rt.generate_with(
                    rt.GenerateParams("smollm2-135m-instruct", "x"),
                    rt.GenerateOptions(sampler=rt.SamplerSpec()),
                )
            except rt.RealmError as e:
                rt.emit(e.code)

    def run(sampler: type[Any]) -> str:
        return FakeHost(sampler=sampler, candidates=lambda p, t: words("a")).run(Caller).output

    assert run(Raises) == "sampler-trap"
    assert run(TwoForOne) == "sampler-invalid"


@pytest.mark.parametrize("name", ["json_extract", "lipogram", "json_rule", "top_sampler"])
def test_sampling_examples_have_a_readme_line(name: str) -> None:
    assert f"`examples/{name}`" in (SDK / "README.md").read_text()
