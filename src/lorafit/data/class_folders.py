"""Labelled texts laid out by class, as users' data often comes: a table of (text, label) rows.

Two layouts of a folder, both read in sorted order so a run is reproducible:
- one file per class: `pos.txt`, `neg.txt`, ... with one text a line (the label is the file's stem);
- one folder per class: `class_name/*.txt` (any files), one text a file, as Keras'
  `text_dataset_from_directory` and scikit-learn's `load_files` read them.
A folder saved with `Dataset.save_to_disk` is neither (it holds .arrow/.json files), and is left to tables.py."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from ..errors import LorafitError

TEXT_SUFFIXES = (".txt", ".text")


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def layout_of(folder: Path) -> Optional[str]:
    """'files' (one file per class), 'folders' (one folder per class) or None (another kind of folder)."""
    entries = _visible(folder)
    if len(entries) >= 2 and all(p.is_file() and p.suffix.lower() in TEXT_SUFFIXES for p in entries):
        return "files"
    if len(entries) >= 2 and all(p.is_dir() for p in entries):
        return "folders"
    return None


def read_class_folder(folder: Path, field: str) -> pd.DataFrame:
    """Rows (text, label) of a folder laid out by class (layout_of); blank lines and files are skipped."""
    layout = layout_of(folder)
    rows: list[tuple[str, str]] = []
    if layout == "files":
        for f in _visible(folder):
            rows += [(line.strip(), f.stem) for line in _text(f, field).splitlines() if line.strip()]
    elif layout == "folders":
        for d in _visible(folder):
            files = [p for p in sorted(d.rglob("*")) if p.is_file() and not p.name.startswith(".")]
            rows += [(t, d.name) for t in (" ".join(_text(p, field).split()) for p in files) if t]
    else:
        raise LorafitError(f"{field}: {folder}: a folder must hold one text file per class (pos.txt, neg.txt: one text "
                           "a line) or one folder per class (class_name/*.txt)")
    labels = {label for _, label in rows}
    if len(labels) < 2:
        raise LorafitError(f"{field}: {folder}: texts of {len(labels)} class found; a classifier needs at least two "
                           "(one file or one folder per class)")
    return pd.DataFrame(rows, columns=["text", "label"])


def _text(path: Path, field: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LorafitError(f"{field}: {path}: not UTF-8 text (byte {e.start}); convert it to UTF-8") from None
