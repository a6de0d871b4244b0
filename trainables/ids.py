"""Stable ids hashed from a job's canonical description, as open_lth names its runs.

A description is canonical when each value has its field's declared type: a float
field holds a float (3 -> 3.0), an int field an int (3.0 -> 3; 3.5 is refused), and a
bool is never a number. `coerce` is the one place that makes it so; every way into a
spec (make_spec, from_dict, a grid) goes through it, so however a number is spelt the
same job hashes to the same id.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import numbers
import typing
from typing import Any

from lnsub.trainables.errors import LnsubError


class FieldError(LnsubError):
    """A refused field value: `field` names it, `why` says what is wrong; the message is 'where' + 'field: why'."""

    def __init__(self, field: str, why: str, where: str = ""):
        self.field, self.why, self.where = field, why, where
        super().__init__(f"{where}{field}: {why}")


@functools.cache
def field_types(cls: type) -> dict[str, tuple[tuple[type, ...], bool]]:
    """Each field of a dataclass: (its declared types without None, whether None is allowed)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        args = typing.get_args(hints[f.name]) or (hints[f.name],)
        out[f.name] = (tuple(a for a in args if a is not type(None)), type(None) in args)
    return out


def _kind_name(kinds: tuple[type, ...], nullable: bool) -> str:
    return " or ".join([k.__name__ for k in kinds] + (["null"] if nullable else []))


def _got(value: Any) -> str:
    hint = ""
    if isinstance(value, str):
        try:
            float(value)
            hint = " (YAML reads 1e-3 as text: write numbers unquoted, with a dot and a signed exponent: 1.0e-3)"
        except ValueError:
            pass
    return f"got {'null' if value is None else type(value).__name__} {value!r}{hint}"


def coerce_value(field: str, value: Any, kinds: tuple[type, ...], nullable: bool) -> Any:
    """`value` in the canonical form of a field declared as `kinds` (FieldError if it has none)."""
    if value is None and nullable:
        return None
    is_number = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if float in kinds and is_number:
        return float(value) + 0.0  # + 0.0: -0.0 and 0.0 are one value
    if int in kinds and is_number:
        if isinstance(value, numbers.Integral):
            return int(value)
        if math.isfinite(value) and float(value).is_integer():
            return int(value)
    elif str in kinds and isinstance(value, str):
        return value
    elif bool in kinds and isinstance(value, bool):
        return value
    raise FieldError(field, f"must be {_kind_name(kinds, nullable)}, {_got(value)}")


def coerce(cls: type, values: dict, where: str = "") -> dict:
    """`values` for dataclass `cls` with each value in its field's canonical type; unknown fields refused."""
    types = field_types(cls)
    unknown = sorted(map(str, set(values) - set(types)))
    if unknown:
        raise FieldError(", ".join(unknown), f"unknown field (known: {', '.join(types)})", where)
    out = {}
    for name, value in values.items():
        try:
            out[name] = coerce_value(name, value, *types[name])
        except FieldError as e:
            raise FieldError(e.field, e.why, where) from None
    return out


def canonical(obj: Any) -> Any:
    """A JSON-ready form with every field present (defaults resolved) and keys sorted."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: canonical(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): canonical(v) for k, v in sorted(obj.items())}
    if isinstance(obj, (list, tuple)):
        return [canonical(v) for v in obj]
    return obj  # numbers arrive canonical by field type (see coerce); 0.1 and 0.10 are one float


def stable_id(obj: Any, schema: int, prefix: str = "", length: int = 16) -> str:
    """Hash of the canonical description plus a schema version; the same job, the same id (NaN has none)."""
    text = json.dumps({"schema": schema, "spec": canonical(obj)}, sort_keys=True, separators=(",", ":"),
                      allow_nan=False)
    return prefix + hashlib.sha256(text.encode()).hexdigest()[:length]
