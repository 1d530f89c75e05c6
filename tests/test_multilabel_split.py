"""The multi_label validation split (issue 16): stratified per label (data/multilabel_split.py), so a
rare label has validation positives to tune its threshold on; exact val_size; seeded; a label too
rare to stratify is said in the run log's data notes, not a crash. Only the last test trains (a step)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import tiny_config
from lorafit import tasks
from lorafit.cli import main
from lorafit.config import DataConfig
from lorafit.data.examples import load_split
from lorafit.data.multilabel_split import iterative_split
from lorafit.errors import LorafitError


def label_table(path, n: int, rates: dict[str, float], seed: int = 0, fixed: dict[str, list[int]] | None = None):
    """n rows of text and '|'-joined labels, each label on with its rate (fixed: its rows instead)."""
    rng = np.random.default_rng(seed)
    on = {name: rng.random(n) < rate for name, rate in rates.items()}
    for name, rows in (fixed or {}).items():
        on[name] = np.isin(np.arange(n), rows)
    tags = ["|".join(name for name in on if on[name][i]) for i in range(n)]
    pd.DataFrame({"text": [f"item {i} words" for i in range(n)], "tags": tags}).to_csv(path, index=False)
    return path


def config(path, **over) -> DataConfig:
    return DataConfig(train=str(path), task="multi_label", label_column="tags", label_delimiter="|",
                      empty_labels="drop", **over)


def test_every_label_is_split_in_proportion_and_a_rare_one_always_has_validation_positives(tmp_path):
    # 'rare' is on in 5% of rows (20 of 400): a plain random 10% split leaves it 0 validation positives
    # about one seed in eight (and 1 or 3+ in most), and the other labels' shares drift by several rows
    path = label_table(tmp_path / "m.csv", 400, {"a": 0.5, "b": 0.3, "c": 0.15}, fixed={"rare": list(range(0, 400, 20))})
    for seed in range(12):
        split = load_split(config(path), seed)
        names = split.label_names
        total = split.train.labels.sum(0) + split.val.labels.sum(0)
        val = split.val.labels.sum(0)
        assert val[names.index("rare")] >= 1, (seed, val)
        share = len(split.val) / (len(split.val) + len(split.train))
        # within a row for all but the most common label, which is placed last and so takes up the exact
        # size's slack (every row here has a label): within 2.5% of its count
        common = names.index("a")
        off = np.abs(val - share * total)
        assert np.all(np.delete(off, common) <= 1.0) and off[common] <= 0.025 * total[common], (seed, val, share * total)


def test_val_size_is_exact_and_the_split_is_seeded(tmp_path):
    path = label_table(tmp_path / "m.csv", 403, {"a": 0.4, "b": 0.2, "c": 0.05})
    frac = load_split(config(path, val_size=0.1), 7)
    n = len(frac.train) + len(frac.val)
    assert len(frac.val) == round(0.1 * n)
    assert len(load_split(config(path, val_size=57), 7).val) == 57
    again = load_split(config(path, val_size=0.1), 7)
    assert frac.val.texts == again.val.texts and frac.train.texts == again.train.texts
    assert np.array_equal(frac.val.labels, again.val.labels)
    other = load_split(config(path, val_size=0.1), 8)
    assert other.val.texts != frac.val.texts  # the seed chooses the rows, not only the tie-breaks


def test_exact_size_wins_over_the_proportions_when_they_clash():
    # every row has label 0; 'rare' (2 rows) wants one row on each side even in a 2-row validation split
    y = np.zeros((50, 2), dtype=np.float32)
    y[:, 0] = 1
    y[[10, 30], 1] = 1
    for seed in range(6):
        tr, va = iterative_split(y, 2, seed)
        assert len(va) == 2 and len(tr) == 48 and sorted([*tr, *va]) == list(range(50))
        assert y[va, 1].sum() == 1 and y[tr, 1].sum() == 1


def test_a_label_too_rare_to_stratify_is_noted_and_keeps_the_default_threshold(tmp_path):
    # 'once' has one positive row: it cannot be on both sides; label_names adds 'never', in no row
    path = label_table(tmp_path / "m.csv", 120, {"a": 0.5, "b": 0.4}, fixed={"once": [17]})
    split = load_split(config(path, label_names=["a", "b", "once", "never"]), 0)
    note = [n for n in split.notes if "no positive row in the validation split" in n]
    assert len(note) == 1, split.notes
    assert "'once' (1 in train)" in note[0] and "'never' (0 in train)" in note[0]
    assert f"thresholds stay {tasks.DEFAULT_THRESHOLD} (not tuned)" in note[0]
    # what the note says is what threshold tuning does with those labels
    logits = np.random.default_rng(0).normal(size=split.val.labels.shape)
    tuned = tasks.tune_thresholds(logits, split.val.labels, split.label_names)
    assert tuned["once"] == tuned["never"] == tasks.DEFAULT_THRESHOLD
    common = load_split(config(label_table(tmp_path / "n.csv", 120, {"a": 0.5, "b": 0.4})), 0)
    assert not [n for n in common.notes if "validation split" in n]


def test_val_size_leaving_too_few_rows_is_refused(tmp_path):
    path = label_table(tmp_path / "m.csv", 40, {"a": 0.5, "b": 0.5})
    with pytest.raises(LorafitError, match=r"data.val_size: 39(\.0)? gives 39 validation rows out of \d+; need between 2 and"):
        load_split(config(path, val_size=39), 0)


def test_the_run_log_names_a_label_without_validation_positives(tmp_path, tiny_roberta, capsys):
    path = label_table(tmp_path / "m.csv", 80, {"a": 0.6, "b": 0.5}, fixed={"once": [5]})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(tiny_config(tiny_roberta, path, data__task="multi_label", data__label_column="tags",
                               data__label_delimiter="'|'", data__empty_labels="drop", train__max_steps=1).to_yaml())
    assert main(["train", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 0
    log = capsys.readouterr().out
    assert "data: 1 label(s) have no positive row in the validation split, too rare to stratify: 'once' (1 in train); " \
           "their thresholds stay 0.5 (not tuned)" in log
    assert json.loads((tmp_path / "run" / "thresholds.json").read_text())["once"] == tasks.DEFAULT_THRESHOLD
