"""Stable ids hashed from a job's canonical description (see STYLE.md, open_lth)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


def canonical(obj: Any) -> Any:
    """A JSON-ready form with every field present (defaults resolved) and keys sorted."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    if isinstance(obj, float) and obj.is_integer():
        return obj  # 0.1 and 0.10 already agree; 1.0 stays a float so 1 and 1.0 differ by type
    return obj


def stable_id(obj: Any, schema: int, prefix: str = "", length: int = 16) -> str:
    """Hash of the canonical description plus a schema version; the same job, the same id."""
    text = json.dumps({"schema": schema, "spec": canonical(obj)}, sort_keys=True, separators=(",", ":"))
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:length]
