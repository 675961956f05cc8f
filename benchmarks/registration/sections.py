"""Sections of docs/benchmarks/registration.md that a benchmark part writes between its own markers
(the verdict, the learned registration), kept when the main benchmark rewrites the file."""

from __future__ import annotations

from pathlib import Path


def write_section(doc: Path, section: str, begin: str, end: str) -> None:
    """Put ``section`` into ``doc`` between ``begin`` and ``end`` (replacing an earlier one), or append it."""
    from medtorch.io import write_text_atomic

    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Registration benchmark\n"
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        _, tail = rest.split(end, 1)
        text = head.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n" + tail.lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    write_text_atomic(doc, text if text.endswith("\n") else text + "\n")


def keep_section(old_text: str, new_text: str, begin: str, end: str) -> str:
    """``new_text`` with the section of ``old_text`` between ``begin`` and ``end`` kept (appended)."""
    if begin not in old_text or end not in old_text:
        return new_text
    section = begin + old_text.split(begin, 1)[1].split(end, 1)[0] + end
    return new_text.rstrip("\n") + "\n\n" + section + "\n"
