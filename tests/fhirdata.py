"""Helpers shared by tests that read the Synthea test bundles (tests/data/fhir/synthea)."""

from __future__ import annotations

from typing import Any


def rewrite_references(value: Any, ids: dict[str, str]) -> Any:
    """``value`` with its ``urn:uuid`` references (a transaction resolves them)
    replaced by the ``type/id`` references in ``ids``."""
    if isinstance(value, dict):
        out = {k: rewrite_references(v, ids) for k, v in value.items()}
        if isinstance(out.get("reference"), str) and out["reference"] in ids:
            out["reference"] = ids[out["reference"]]
        return out
    if isinstance(value, list):
        return [rewrite_references(v, ids) for v in value]
    return value
