"""A resolved config as YAML with a comment on the keys that were chosen for the user (zero-config runs),
written by hand: PyYAML drops comments, and a comment per line is all that is needed."""
from __future__ import annotations

from typing import Any

import yaml


def _scalar(value: Any) -> str:
    """One value on one line in YAML's flow style ([a, b], {k: v}, quoted where YAML needs it)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 20, sort_keys=False).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _lines(node: dict, notes: dict[str, str], prefix: str, indent: str) -> list[str]:
    out = []
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        note = f"  # {notes[dotted]}" if dotted in notes else ""
        if isinstance(value, dict) and value:
            out.append(f"{indent}{key}:{note}")
            out += _lines(value, notes, dotted + ".", indent + "  ")
        else:
            out.append(f"{indent}{key}: {_scalar(value)}{note}")
    return out


def annotated_yaml(raw: dict, notes: dict[str, str], header: list[str] = ()) -> str:
    """raw (a RunConfig dump) as block YAML, the value of each key in `notes` followed by `# why`."""
    lines = [f"# {h}" for h in header]
    for section, value in raw.items():
        if isinstance(value, dict):
            lines += ["", f"{section}:"] + _lines(value, notes, section + ".", "  ")
        else:
            lines.append(f"{section}: {_scalar(value)}" + (f"  # {notes[section]}" if section in notes else ""))
    return "\n".join(lines).lstrip("\n") + "\n"
