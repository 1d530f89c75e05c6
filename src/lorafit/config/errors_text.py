"""The closest known name to a misspelt key (shared by the loader's messages and other modules)."""
from __future__ import annotations

import difflib


def suggest(word: str, options: list[str]) -> str | None:
    """Closest known name: a known name that is the leading word (`lr_rate` → `lr`), else difflib's."""
    head = word.replace("-", "_").split("_")[0]
    if head != word and head in options:
        return head
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.5)
    return close[0] if close else None
