"""Metadata filters in OpenAI's vector-store shape: a comparison `{type: eq|ne|gt|gte|lt|lte|in|nin,
key, value}` or a compound `{type: and|or, filters: [...]}`, checked before use (depth, size, types)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Scalar = str | int | float | bool
MetadataValue = Scalar
MAX_DEPTH = 8
MAX_VALUES = 256


class Comparison(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "nin"]
    key: str = Field(..., min_length=1, max_length=64)
    value: Scalar | Annotated[list[Scalar], Field(max_length=MAX_VALUES)]


class Compound(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["and", "or"]
    filters: list[Comparison | Compound] = Field(..., min_length=1, max_length=32)


Filter = Comparison | Compound


def check_depth(f: Filter, depth: int = 1) -> None:
    """ValueError when compounds nest deeper than MAX_DEPTH."""
    if depth > MAX_DEPTH:
        raise ValueError(f"filters nest deeper than {MAX_DEPTH} levels")
    if isinstance(f, Compound):
        for sub in f.filters:
            check_depth(sub, depth + 1)


def _ordered(a: object, b: object) -> tuple[float, float] | tuple[str, str] | None:
    # Numbers compare with numbers, strings with strings; anything else never matches an order.
    if isinstance(a, bool) or isinstance(b, bool):
        return None
    if isinstance(a, int | float) and isinstance(b, int | float):
        return float(a), float(b)
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    return None


def matches(f: Filter, metadata: dict[str, MetadataValue]) -> bool:
    if isinstance(f, Compound):
        results = (matches(sub, metadata) for sub in f.filters)
        return all(results) if f.type == "and" else any(results)
    present = f.key in metadata
    have = metadata.get(f.key)
    if f.type in ("in", "nin"):
        values = f.value if isinstance(f.value, list) else [f.value]
        inside = present and any(type(have) is type(v) and have == v for v in values)
        return inside if f.type == "in" else not inside
    if isinstance(f.value, list):
        return False
    if f.type == "eq":
        return present and type(have) is type(f.value) and have == f.value
    if f.type == "ne":
        return not (present and type(have) is type(f.value) and have == f.value)
    pair = _ordered(have, f.value) if present else None
    if pair is None:
        return False
    a, b = pair
    if f.type == "gt":
        return a > b  # type: ignore[operator]
    if f.type == "gte":
        return a >= b  # type: ignore[operator]
    if f.type == "lt":
        return a < b  # type: ignore[operator]
    return a <= b  # type: ignore[operator]
