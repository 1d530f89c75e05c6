"""Each data.task is one object behind one interface (lorafit.tasks, issue 26): on tiny arrays, every task
decodes logits into its answers, gives probabilities (or refuses them), scores, writes predictions columns
and server response fields; and code outside tasks/ does not branch on a task's name."""
from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from lorafit import tasks
from lorafit.errors import LorafitError

NAMES = ["a", "b", "c"]
LOGITS = np.array([[2.0, -1.0, 0.5], [-3.0, 0.2, 1.0]], dtype=np.float32)
SRC = Path(__file__).resolve().parents[1] / "src" / "lorafit"


def test_every_task_implements_the_interface():
    """No task leaves a method of Task unimplemented (a NotImplementedError at run time would be the symptom)."""
    methods = [k for k, v in vars(tasks.Task).items() if callable(v) and not k.startswith("_")]
    for name in (tasks.SINGLE, tasks.MULTI, tasks.REGRESSION):
        task = tasks.get(name)
        assert task.name == name and isinstance(task, tasks.Task)
        assert tasks.task_of(SimpleNamespace(data=SimpleNamespace(task=name))) is task
        assert tasks.task_of(SimpleNamespace(task=name)) is task
        for m in ("targets", "split_rows", "loss", "balanced_weights", "batch_score", "curve_keys", "metrics", "decode",
                  "probabilities", "probability_columns", "response"):
            assert m in methods and getattr(type(task), m) is not getattr(tasks.Task, m), (name, m)
    with pytest.raises(ValueError, match="unknown task 'ranking'"):
        tasks.get("ranking")


def test_single_label_object(tmp_path):
    task = tasks.get(tasks.SINGLE)
    assert task.decode(LOGITS, NAMES) == ["a", "c"]
    assert task.prediction_column(LOGITS, NAMES, None, None) == ["a", "c"]
    p = task.probabilities(LOGITS, temperature=2.0)
    np.testing.assert_allclose(p.sum(1), 1.0)
    np.testing.assert_allclose(p, torch.softmax(torch.tensor(LOGITS, dtype=torch.float64) / 2, -1).numpy())
    cols = task.probability_columns(SimpleNamespace(path=tmp_path, temperature=2.0), LOGITS, NAMES)
    assert list(cols) == ["prob_a", "prob_b", "prob_c"] and cols["prob_a"][0] == str(np.float32(p[0, 0]))
    assert task.response(LOGITS, NAMES) == {"labels": ["a", "c"], "label_ids": [0, 2]}
    assert task.response(LOGITS, NAMES, temperature=2.0, probs=True)["probs"] == p.tolist()
    m = task.metrics(np.array([0, 1]), LOGITS, NAMES)
    assert m["accuracy"] == 0.5 and m["n"] == 2
    labels = torch.tensor([0, 1])
    assert task.batch_score(torch.tensor(LOGITS), labels).item() == 1.0
    assert task.train_scores(torch.tensor(1.0), torch.tensor(2)) == {"train_accuracy": 0.5}
    assert task.curve_keys() == ("train_accuracy", "accuracy")
    assert task.problem_type is None and task.calibrated and not task.tuned and task.read_thresholds(tmp_path) is None
    cfg = SimpleNamespace(label_names=None, label_column="y")
    y, names = task.targets(["b", "a", "b"], cfg, None, "f.csv", [0, 1, 2], False)
    assert names == ["a", "b"] and y.tolist() == [1, 0, 1]
    w = task.balanced_weights(np.array([0, 0, 0, 1]), ["a", "b"])
    np.testing.assert_allclose(w.numpy(), [4 / 6, 2.0], rtol=1e-6)


def test_multi_label_object(tmp_path):
    task = tasks.get(tasks.MULTI)
    thr = {"a": 0.5, "b": 0.4, "c": 0.8}  # sigmoid(0.2) = 0.55 >= 0.4; sigmoid(1.0) = 0.73 < 0.8; sigmoid(0.5) = 0.62
    assert task.decode(LOGITS, NAMES, thr) == [["a"], ["b"]]
    assert task.decode(LOGITS, NAMES) == [["a", "c"], ["b", "c"]]
    assert task.prediction_column(LOGITS, NAMES, thr, "|") == ["a", "b"]
    assert task.prediction_column(LOGITS, NAMES, None, None) == ['["a", "c"]', '["b", "c"]']
    p = task.probabilities(LOGITS)
    np.testing.assert_allclose(p, 1 / (1 + np.exp(-LOGITS.astype(np.float64))))
    cols = task.probability_columns(SimpleNamespace(path=tmp_path), LOGITS, NAMES, thresholds=thr)
    assert list(cols) == ["prob_a", "prob_b", "prob_c"] and float(cols["prob_b"][1]) == pytest.approx(p[1, 1], abs=1e-6)
    r = task.response(LOGITS, NAMES, thresholds=thr, probs=True)
    assert r["labels"] == [["a"], ["b"]] and r["probs"] == p.tolist() and "label_ids" not in r
    m = task.metrics(np.array([[1, 0, 0], [0, 1, 0]], dtype=np.float32), LOGITS, NAMES, thr)
    assert m["subset_accuracy"] == 1.0 and m["per_label"]["c"]["threshold"] == 0.8
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    assert task.batch_score(torch.tensor(LOGITS), labels).item() == 1.0  # at 0.5: row 0 exact, row 1 not
    assert task.curve_keys() == ("train_subset_accuracy", "subset_accuracy")
    assert task.problem_type == "multi_label_classification" and task.tuned and not task.calibrated
    with pytest.raises(LorafitError, match="thresholds.json missing"):
        task.read_thresholds(tmp_path)
    task.save_thresholds(tmp_path, thr)
    assert task.read_thresholds(tmp_path) == thr
    cfg = SimpleNamespace(label_names=None, label_column="y", label_delimiter="|")
    y, names = task.targets(["a|b", "b"], cfg, None, "f.csv", [0, 1], False)
    assert names == ["a", "b"] and y.tolist() == [[1, 1], [0, 1]]
    w = task.balanced_weights(np.array([[1, 0], [1, 1], [0, 0], [0, 0]]), ["a", "b"])
    np.testing.assert_allclose(w.numpy(), [1.0, 3.0])


def test_regression_object(tmp_path):
    task = tasks.get(tasks.REGRESSION)
    one = LOGITS[:, :1]
    assert task.decode(one, ["y"]) == [2.0, -3.0]
    assert task.prediction_column(one, ["y"], None, None) == [2.0, -3.0] and task.column_dtype is float
    assert task.response(one, ["y"]) == {"labels": [2.0, -3.0]}
    assert not task.has_probabilities and "--probs" in task.probs_refused(tmp_path, ["y"])
    with pytest.raises(LorafitError, match="not probabilities"):
        task.probabilities(one)
    with pytest.raises(LorafitError, match="not probabilities"):
        task.response(one, ["y"], probs=True)
    m = task.metrics(np.array([2.0, -1.0]), one, ["y"])
    assert m["rmse"] == pytest.approx(np.sqrt(2.0)) and m["mae"] == 1.0
    sq = task.batch_score(torch.tensor(one), torch.tensor([2.0, -1.0]))
    assert sq.item() == 4.0 and task.train_scores(sq, torch.tensor(2)) == {"train_rmse": pytest.approx(np.sqrt(2.0))}
    assert task.curve_keys() == ("train_rmse", "rmse") and task.problem_type == "regression"
    assert not task.weighs_classes and task.read_thresholds(tmp_path) is None
    y, names = task.targets(["1.5", 2], SimpleNamespace(label_column="score"), None, "f.csv", [0, 1], False)
    assert names == ["score"] and y.tolist() == [1.5, 2.0]
    with pytest.raises(LorafitError, match="row 2: target 'x'"):
        task.targets(["1", "x"], SimpleNamespace(label_column="score"), None, "f.csv", [0, 1], False)


def test_no_task_name_branches_outside_tasks():
    """Code outside tasks/ asks the task object; a `task ==` chain there would be a fourth copy of the dispatch."""
    pattern = re.compile(r"task\s*[!=]=|in \(tasks\.|tasks\.(MULTI|REGRESSION)\b")
    found = [f"{p.relative_to(SRC)}:{i}" for p in SRC.rglob("*.py") if "tasks" not in p.relative_to(SRC).parts
             for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert found == []
