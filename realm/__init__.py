"""Realm: one shared LLM engine, many tenants, each with its own WebAssembly orchestration."""

__version__ = "0.1.0"
