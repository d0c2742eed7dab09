"""The OpenAI-compatible HTTP API of the runtime. Never imports an engine backend."""

from .app import create_app
from .state import AppState

__all__ = ["AppState", "create_app"]
