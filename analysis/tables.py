"""Tidy CSV in and out, with the types of each row's fields read back as they were written.

An analysis writes its rows as CSV (what a person opens in a spreadsheet) and hands them to the
next analysis as files; `read_rows` reads them back into a frozen dataclass per row, each field in
its declared type, so no analysis re-parses another's strings (`float(r["sparsity"])`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import typing
from pathlib import Path
from typing import TypeVar

from lnsub.trainables.storage.local import write_text

Row = TypeVar("Row")


def write_csv(path: Path, rows: list) -> None:
    """Rows of one shape (dicts or dataclasses) as CSV, written atomically (an empty list gives an empty file)."""
    rows = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else r for r in rows]
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buf.getvalue())


def read_csv(path: Path) -> list[dict]:
    """The rows of a CSV as strings (empty when the file does not exist: its analysis has not run)."""
    if not path.exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _parse(text: str, kind) -> object:
    """One CSV cell in its field's type: bool, int, float, str, or None (empty) for an optional field."""
    args = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
    base = args[0]
    if text == "" and type(None) in typing.get_args(kind):
        return None
    if base is bool:
        if text not in ("True", "False"):
            raise ValueError(f"not a bool: {text!r}")
        return text == "True"
    if base is int:
        return int(text)
    if base is float:
        return float(text) if text != "" else float("nan")
    return text


def read_rows(path: Path, cls: type[Row]) -> list[Row]:
    """The rows of a CSV as `cls` instances (a dataclass), each field parsed to its declared type; columns the
    class does not declare are left out, and a missing column takes the field's default."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = []
    for raw in read_csv(path):
        values = {name: _parse(raw[name], hints[name]) for name in fields if name in raw}
        out.append(cls(**values))
    return out
