"""Writing a run's files atomically: a killed process never leaves half a file behind.

Importing this module does not import TensorFlow.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Iterator, Sequence
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path beside ``path`` to write to; renames it to ``path`` when the block succeeds.

    The temporary name keeps the extension (``model.tmp.keras``), for writers
    that look at it (Keras, numpy, matplotlib). On failure it is removed.
    """
    root, extension = os.path.splitext(path)
    temporary = f"{root}.tmp{extension}"
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically."""
    with atomic_path(path) as temporary, open(temporary, "w") as f:
        f.write(text)


def write_bytes(path: str, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically."""
    with atomic_path(path) as temporary, open(temporary, "wb") as f:
        f.write(data)


def _json_value(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def write_json(path: str, values: Any, sort_keys: bool = False) -> None:
    """Writes ``values`` as indented JSON (numpy scalars as numbers) to ``path`` atomically."""
    write_text(path, json.dumps(values, indent=2, sort_keys=sort_keys, default=_json_value) + "\n")


def write_csv(path: str, rows: Sequence[dict], columns: Sequence[str] | None = None) -> None:
    """Writes ``rows`` as CSV with a header (``columns``: default every key, in first-seen order) atomically."""
    columns = list(columns or dict.fromkeys(key for row in rows for key in row))
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)
