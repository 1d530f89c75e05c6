"""Row checks a stream needs beyond parsing: IDs unique over the whole input (in bounded memory) and
text cells that hold text. A failing row is a bad row (chunks.BadRow): stopped at or skipped."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


class UniqueIds:
    """IDs seen so far, as 64-bit hashes of their text in sorted numpy arrays whose sizes halve from the
    largest down (a binary counter of runs: an array merges into the next one when it reaches its size).
    Memory: 8 bytes per ID plus, during a merge, a copy of the merged arrays (10M IDs: 80 MB, at most
    ~160 MB for a moment); a lookup is a binary search per array (at most log2(rows) arrays).
    Two different IDs collide with probability about n^2 / 2^65 (10M IDs: 3e-6): such a pair would be
    reported as a duplicate. The text hashed is the cell as the output writes it, so 7 and "7" agree."""

    def __init__(self):
        self.runs: list[np.ndarray] = []

    @staticmethod
    def hashes(values: Sequence) -> np.ndarray:
        text = np.asarray(["" if v is None else str(v) for v in values], dtype=object)
        return pd.util.hash_array(text, categorize=False)

    def add(self, values: Sequence) -> list[int]:
        """Record the values; positions (into values) of those seen before, here or earlier."""
        h = self.hashes(values)
        dup = np.zeros(len(h), dtype=bool)
        for run in self.runs:
            pos = np.searchsorted(run, h)
            dup |= (pos < len(run)) & (run[np.minimum(pos, len(run) - 1)] == h)
        _, first = np.unique(h, return_index=True)
        repeat = np.ones(len(h), dtype=bool)
        repeat[first] = False  # a value twice in this chunk: its later places
        dup |= repeat
        new = np.unique(h[~dup])
        while self.runs and len(self.runs[-1]) <= len(new):
            new = np.union1d(self.runs.pop(), new)
        self.runs.append(new)
        return np.flatnonzero(dup).tolist()

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.runs)


def non_text_cells(frame: pd.DataFrame, columns: Sequence[str]) -> dict[int, str]:
    """{row number: why} of rows whose text columns hold something that is not text: a list, an object,
    bytes (a JSON record's nested value, a Parquet list column). Numbers and empty cells are text
    enough (a number is read as its digits; an empty cell is an empty text)."""
    bad: dict[int, str] = {}
    for c in columns:
        if c not in frame.columns or frame[c].dtype != object:
            continue
        for row, v in frame[c].items():
            if isinstance(v, (list, dict, tuple, bytes, bytearray, np.ndarray)) and row not in bad:
                bad[row] = f"column '{c}' holds a {type(v).__name__}, not a text"
    return bad
