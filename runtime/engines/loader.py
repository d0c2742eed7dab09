"""Engine construction by backend name; heavy backends import lazily."""

from __future__ import annotations

from ..spec.runtime_config import ModelConfig
from .base import Engine


def create_engine(cfg: ModelConfig) -> Engine:
    if cfg.engine == "llamacpp":
        from .llamacpp import LlamaCppEngine

        return LlamaCppEngine(cfg)
    if cfg.engine == "trtllm":
        from ..trt_engines.engine import TrtLlmEngine

        engine: Engine = TrtLlmEngine(cfg)
        return engine
    raise ValueError(f"unknown engine {cfg.engine!r}")
