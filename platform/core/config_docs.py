"""The reference of every config key (dotted name, default, comment) as a Markdown table.

The text comes from the typed schema itself (``codetr/config/*.py``): each field's inline comment, or the
comment lines just above it. The key reference in docs/configuration.md is this output
(``python -m platform.config_reference``).
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import typing

from codetr.config import Config

_FIELD = re.compile(r"^\s+(\w+)\s*:\s*[^=#]+?(?:=.*?)?(?:#\s*(.*))?$")


def _field_comments(cls: type) -> dict[str, str]:
    """``{field name: comment}`` from the class source (inline comment, else the comment lines above)."""
    comments: dict[str, str] = {}
    pending: list[str] = []
    for line in inspect.getsource(cls).splitlines()[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            pending.append(stripped.lstrip("#").strip())
            continue
        match = _FIELD.match(line)
        if match and not stripped.startswith(("def ", "@", "return")) and ":" in stripped:
            name, inline = match.group(1), match.group(2)
            comments.setdefault(name, (inline or " ".join(pending)).strip())
        if stripped.startswith("def "):
            break
        pending = []
    return comments


def _default_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def rows(cls: type = Config, prefix: str = "", instance=None) -> list[tuple[str, str, str]]:
    """``[(dotted key, default, comment)]`` for every leaf field of the dataclass tree ``cls``."""
    instance = instance if instance is not None else cls()
    comments = _field_comments(cls)
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        value = getattr(instance, f.name)
        if dataclasses.is_dataclass(hints[f.name]):
            out += rows(hints[f.name], f"{key}.", value)
        else:
            out.append((key, _default_text(value), comments.get(f.name, "")))
    return out


def markdown(section: str | None = None) -> str:
    lines = ["| key | default | meaning |", "| --- | --- | --- |"]
    for key, default, comment in rows():
        if section and not key.startswith(f"{section}."):
            continue
        comment = comment.replace("|", "\\|")
        lines.append(f"| `{key}` | `{default}` | {comment} |")
    return "\n".join(lines)
