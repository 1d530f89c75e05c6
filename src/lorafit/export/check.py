"""What an export is checked on, and the check itself: the run's validation texts (or a --check
file; with their pair texts for a text-pair run), and the rule an exported
model must meet: logits within ATOL of lorafit's and the same label for every text."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..errors import LorafitError

ATOL = 1e-4  # fp32 export vs lorafit: the same math in another runtime, so only rounding may differ


def check_texts(run_dir: Path, cfg, check: Optional[str], *, allow_pickle: bool = False,
                text_columns: Optional[Sequence[str]] = None, delimiter: Optional[str] = None,
                input_format: Optional[str] = None) -> tuple[str, list[str], Optional[list[str]]]:
    """(where the texts came from, texts, pair texts or None): --check FILE, else the run's validation
    split rebuilt from its config (same file, seed and split as in training)."""
    if check:
        from ..predict import read_inputs

        _, _, texts, pairs = read_inputs(check, cfg.data, allow_pickle, text_columns=text_columns,
                                         delimiter=delimiter, input_format=input_format)
        where = check
    else:
        from ..data.examples import load_split, split_seed

        try:
            val = load_split(cfg.data, split_seed(cfg.data, cfg.seed)).val
            texts, pairs = val.texts, val.pairs
        except LorafitError as e:
            raise LorafitError(f"export: the run's validation texts cannot be rebuilt ({e}); give --check FILE with "
                               "texts to check the export on") from None
        where = f"the run's validation set ({cfg.data.train})"
    if not texts:
        raise LorafitError(f"--check: {where} has no texts to check the export on")
    return where, list(texts), None if pairs is None else list(pairs)


@dataclass
class Agreement:
    max_abs_diff: float
    labels_equal: int
    n: int

    @property
    def fraction(self) -> float:
        return self.labels_equal / self.n

    def passes(self, atol: float = ATOL) -> bool:
        return self.max_abs_diff <= atol and self.labels_equal == self.n

    def describe(self) -> str:
        return (f"max |logit difference| {self.max_abs_diff:.2e}, labels equal on {self.labels_equal}/{self.n} "
                f"({100 * self.fraction:.2f}%)")


def compare(ref: np.ndarray, got: np.ndarray) -> Agreement:
    if ref.shape != got.shape:
        raise RuntimeError(f"export check: logits of shape {got.shape}, lorafit's are {ref.shape}")
    diff = float(np.max(np.abs(ref.astype(np.float64) - got))) if ref.size else 0.0
    return Agreement(diff, int((ref.argmax(-1) == got.argmax(-1)).sum()), len(ref))


def int8_verdict(fp32: np.ndarray, int8: np.ndarray, min_agreement: float) -> Agreement:
    """int8 logits differ by design: the rule is the share of labels equal to fp32's, in percent."""
    a = compare(fp32, int8)
    pct = 100 * a.fraction
    if pct < min_agreement:
        raise LorafitError(f"export: int8 labels agree with fp32 on {pct:.2f}% of {a.n} check texts ({a.labels_equal}), "
                           f"below --min-agreement {min_agreement:g}%; export without --quantize, or lower "
                           "--min-agreement; nothing was written")
    return a
