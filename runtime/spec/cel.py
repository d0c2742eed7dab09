"""CEL rules (`x-kubernetes-validations`) attached to the spec models; crdgen copies them into the CRDs."""

from __future__ import annotations

from typing import Any


def cel(rule: str, message: str) -> dict[str, str]:
    """One `x-kubernetes-validations` entry."""
    return {"rule": rule, "message": message}


def validations(*rules: dict[str, str]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules on a model or a field."""
    return {"x-kubernetes-validations": list(rules)}
