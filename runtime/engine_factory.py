"""Engine construction by backend name; heavy backends import lazily.

Above both engine packages, so that engines/ never imports trt_engines/ (which builds on engines.base)."""

from __future__ import annotations

from .engines.base import Engine
from .spec.runtime_config import ModelConfig


def create_engine(cfg: ModelConfig) -> Engine:
    if cfg.engine == "llamacpp":
        from .engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(cfg)
    if cfg.engine == "trtllm":
        from .trt_engines.engine import TrtLlmEngine

        engine: Engine = TrtLlmEngine(cfg)
        return engine
    raise ValueError(f"unknown engine {cfg.engine!r}")
