"""English for error messages: articles, plurals, JSON type names, short lists and paths."""

from __future__ import annotations

import os


def json_kind(value) -> str:
    """The JSON type name of a parsed value (ints and floats are both "number")."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", dict: "object", list: "array"}.get(type(value), type(value).__name__)


def article(kind: str) -> str:
    return f"an {kind}" if kind[0] in "aeiou" else f"a {kind}"


def first_few(items: list[str], limit: int = 5, total: int | None = None) -> str:
    """'a, b, c, d, e and 3 more': the first ``limit`` items of ``total`` (default: all of ``items``)."""
    total = len(items) if total is None else total
    shown = ", ".join(str(item) for item in items[:limit])
    return shown + (f" and {total - limit} more" if total > limit else "")


def relative_path(path: str, folder: str | None) -> str:
    """``path`` relative to ``folder`` (with '/') when it lies in it, else as it is."""
    if folder and os.path.isabs(path):
        return os.path.relpath(path, folder).replace(os.sep, "/")
    return path


def plural_rows(count: int) -> str:
    return f"{count} row{'s' if count != 1 else ''}"
