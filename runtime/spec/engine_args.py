"""The engine settings a Model version's `engineArgs` may carry for llama.cpp.

Keys are llama-server's long flags in camelCase (`--n-gpu-layers` → `nGpuLayers`), so a user who knows
llama.cpp knows them. Every key is optional: absent means the default its description names. The CRD
shows these keys (with types, bounds and defaults, for `kubectl explain`) but sets no schema defaults,
because `engineArgs` is shared with TensorRT-LLM versions, whose keys are passed to `LLM(...)` as they
are; unknown keys are refused for llamacpp versions by the operator and by the runtime.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError, model_validator
from pydantic.config import JsonDict

from .tenant import SpecModel

# ggml types llama.cpp accepts for the KV cache (llama-server's --cache-type-k/-v).
CacheType = Literal["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "iq4_nl", "q5_0", "q5_1"]

MSG_QUANT_V_NEEDS_FLASH = "a quantized cacheTypeV needs flash attention: leave flashAttn unset (auto) or true"


class LlamaCppArgs(SpecModel):
    """engineArgs of a llamacpp version."""

    # "4" for threads or 1 for flashAttn is a mistake to report, not a value to coerce.
    model_config = ConfigDict(strict=True)

    n_gpu_layers: int | None = Field(
        None,
        ge=-1,
        le=1024,
        description="Layers offloaded to the GPU; -1 offloads all. Default: -1 when the version's pods "
        "request a GPU (resources.gpu >= 1), else 0. Needs a GPU build of llama.cpp (the GPU image).",
    )
    flash_attn: bool | None = Field(
        None,
        description="Flash attention: true on, false off. Default: unset, llama.cpp turns it on where "
        "the backend supports it (auto).",
    )
    cache_type_k: CacheType | None = Field(
        None, description="Type of the K cache (f16, q8_0, ...). Default: f16."
    )
    cache_type_v: CacheType | None = Field(
        None,
        description="Type of the V cache (f16, q8_0, ...); quantized types need flash attention. "
        "Default: f16.",
    )
    threads: int | None = Field(
        None,
        ge=1,
        le=256,
        description="CPU threads for token generation. "
        "Default: runtime.threads, else every core the pod sees.",
    )
    threads_batch: int | None = Field(
        None, ge=1, le=256, description="CPU threads for prompt processing. Default: the value of threads."
    )
    batch_size: int | None = Field(
        None,
        ge=32,
        le=8192,
        description="Logical batch: most tokens (decode steps plus prefill chunks) in one llama_decode. "
        "Default: 512. Must be at least runtime.maxBatch and runtime.prefillChunk.",
    )
    ubatch_size: int | None = Field(
        None,
        ge=1,
        le=8192,
        description="Physical batch: most tokens computed at once inside one llama_decode. "
        "Default: batchSize, at most 512.",
    )
    extra_buffer_types: bool | None = Field(
        None,
        description="Weight layouts repacked for the CPU's SIMD and AMX (llama.cpp's extra buffer types). "
        "Default: true. false is an escape hatch for CPUs that misbehave with them.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> LlamaCppArgs:
        if self.cache_type_v not in (None, "f32", "f16", "bf16") and self.flash_attn is False:
            raise ValueError(MSG_QUANT_V_NEEDS_FLASH)
        if (
            self.batch_size is not None
            and self.ubatch_size is not None
            and self.ubatch_size > self.batch_size
        ):
            raise ValueError("ubatchSize must not exceed batchSize")
        return self


def llamacpp_args(engine_args: Mapping[str, object]) -> LlamaCppArgs:
    """Parse a llamacpp version's engineArgs; the ValueError names every offending key."""
    known = {f.alias or name for name, f in LlamaCppArgs.model_fields.items()}
    unknown = sorted(set(engine_args) - known)
    if unknown:
        raise ValueError(
            f"engineArgs: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(unknown)} for engine "
            f"llamacpp (known: {', '.join(sorted(known))})"
        )
    try:
        return LlamaCppArgs.model_validate(dict(engine_args))
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'engineArgs'}: {err['msg']}" for err in e.errors()
        )
        raise ValueError(f"engineArgs: {problems}") from None


def batch_size_error(
    engine_args: Mapping[str, object], *, max_batch: int, prefill_chunk: int, fields: tuple[str, str]
) -> str | None:
    """Why a llamacpp version's batchSize cannot hold one step (one token per running sequence, or one
    prefill chunk), or None. `fields` is how the caller's document spells the other two settings."""
    size = engine_args.get("batchSize")
    if isinstance(size, int) and size < max(max_batch, prefill_chunk):
        batch_name, chunk_name = fields
        return (
            f"engineArgs.batchSize ({size}) must be at least {batch_name} ({max_batch}) "
            f"and {chunk_name} ({prefill_chunk})"
        )
    return None


def engine_args_schema(schema: JsonDict) -> None:
    """The CRD schema of `engineArgs`: llama.cpp's keys, typed and documented, and any other key kept
    for TensorRT-LLM (whose values the operator's parse limits to scalars)."""
    schema.pop("additionalProperties", None)
    schema["properties"] = LlamaCppArgs.model_json_schema(by_alias=True)["properties"]
    schema["x-kubernetes-preserve-unknown-fields"] = True
