"""`lorafit train --seeds`: one run per seed on one validation set, mean ± sd written and printed."""
import json

import pytest

from lorafit.cli import main
from lorafit.config import load_config
from lorafit.errors import LorafitError
from lorafit.train.seeds import mean_sd, parse_seeds


def test_seeds_run_and_report_mean_sd(tiny_roberta, synth_csv, tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: {tiny_roberta}}}\ndata: {{train: {synth_csv}, val_size: 0.2, max_length: 32, limit: 120}}\n"
                   "adapter: {r: auto, dropout: 0.0}\nbudget: {max_trainable: 3000}\n"
                   "train: {max_steps: 3, batch_size: 16, eval_batch_size: 64}\noptim: {lr: 5.0e-3}\n")
    out = tmp_path / "out"
    assert main(["train", "--config", str(cfg), "--seeds", "0,1", "--out", str(out)]) == 0
    summary = json.loads((out / "seeds.json").read_text())
    assert summary["seeds"] == [0, 1] and summary["trainable"] <= 3000
    acc = summary["metrics"]["validation.accuracy"]
    assert len(acc["values"]) == 2 and (acc["mean"], acc["sd"]) == pytest.approx(mean_sd(acc["values"]))
    assert {"validation.macro_f1", "validation.loss", "wall_seconds", "train_seconds"} <= set(summary["metrics"])
    md = (out / "seeds.md").read_text()
    assert "| validation.accuracy |" in md and "±" in md and "--seeds 0,1 --out" in md
    assert "validation.accuracy" in capsys.readouterr().out
    runs = [load_config(out / f"seed-{s}" / "config.yaml") for s in (0, 1)]
    assert [c.seed for c in runs] == [0, 1]
    assert {c.data.split_seed for c in runs} == {42}  # one validation set for every seed
    assert all(isinstance(c.adapter.r, int) for c in runs)  # adapter.r: auto resolved in the saved config
    vals = [json.loads((out / f"seed-{s}" / "eval.json").read_text())["validation"] for s in (0, 1)]
    assert vals[0]["n"] == vals[1]["n"] and [sum(r) for r in vals[0]["confusion"]] == [sum(r) for r in vals[1]["confusion"]]
    # existing seed folders are refused before anything trains
    assert main(["train", "--config", str(cfg), "--seeds", "1,2", "--out", str(out)]) == 2


def test_parse_seeds():
    assert parse_seeds("0,1,2") == [0, 1, 2]
    for bad in ("a,b", "1,1", ""):
        with pytest.raises(LorafitError):
            parse_seeds(bad)
    assert mean_sd([1.0]) == (1.0, 0.0) and mean_sd([1.0, 3.0]) == pytest.approx((2.0, 2 ** 0.5))
