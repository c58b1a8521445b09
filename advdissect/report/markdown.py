"""Markdown rendering: table cells and tables, shared by Table 2 and the demo results."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any


def md_escape(value: Any) -> str:
    """A Markdown table cell's text, its pipes escaped."""
    return str(value).replace("|", "\\|")


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Iterable[int]) -> str:
    """A Markdown table; the columns numbered in `right` are right-aligned."""
    right = set(right)
    align = ["---:" if i in right else ":---" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)
