"""What a run tells its user (issue 19, defect 13): progress that reaches 100%, plain lines when the
output is not a terminal, the test score printed, a warning when a class is never predicted,
`--version`, and argument errors before torch loads."""
from __future__ import annotations

import pytest

import io
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from conftest import run_cli, tiny_config
from lorafit.progress import LineProgress, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_line_progress_writes_whole_lines_and_a_last_one():
    out = io.StringIO()
    bar = LineProgress(320, "training", " samples", file=out, interval=0)
    for _ in range(10):
        bar.update(32)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 11 and lines[-1].startswith("training: 320/320 samples (100%)")
    assert "\r" not in out.getvalue() and "\x1b" not in out.getvalue()


def test_inner_progress_is_silent_unless_it_runs_long():
    quiet = io.StringIO()
    with LineProgress(10, "evaluating", " items", file=quiet, interval=3600, leave=False) as bar:
        bar.update(10)
    assert quiet.getvalue() == ""
    loud = io.StringIO()
    with LineProgress(10, "evaluating", " items", file=loud, interval=0, leave=False) as bar:
        bar.update(10)
    assert loud.getvalue().splitlines()[-1].startswith("evaluating: 10/10 items (100%)")


def test_progress_is_tqdm_on_a_terminal_and_lines_elsewhere():
    from tqdm.auto import tqdm

    assert isinstance(progress(total=3, desc="x", file=_Terminal()), tqdm)
    plain = progress(range(3), desc="x", file=io.StringIO())
    assert list(plain) == [0, 1, 2] and len(plain) == 3


@pytest.mark.slow
def test_training_log_has_no_terminal_escapes_and_progress_ends_at_the_total(tiny_roberta, synth_csv, tmp_path):
    """300/320 before: the bar's total assumed every batch full. Redirected output held \\r and ESC[A."""
    cfg = tmp_path / "c.yaml"
    # 150 training rows, batch 16: the last batch of each epoch holds 6 items
    cfg.write_text(tiny_config(tiny_roberta, synth_csv, data__limit=180, data__val_size=30, train__epochs=2).to_yaml())
    proc = run_cli("train", "--config", cfg, "--out", tmp_path / "run", env={"LORAFIT_PROGRESS_SECONDS": "0"})
    assert proc.returncode == 0, proc.stderr
    both = proc.stdout + proc.stderr
    assert "\r" not in both and "\x1b" not in both
    training = [x for x in proc.stderr.splitlines() if x.startswith("training: ")]
    assert training and training[-1].startswith("training: 300/300 samples (100%)"), training[-3:]


def test_the_test_score_is_printed(tiny_roberta, synth_csv, tmp_path):
    from lorafit.train.run import run_training

    test = tmp_path / "test.csv"
    pd.read_csv(synth_csv).head(40).to_csv(test, index=False)
    lines = []
    result = run_training(tiny_config(tiny_roberta, synth_csv, data__test=test, train__max_steps=2, data__limit=100),
                          tmp_path / "run", log=lines.append)
    t = result["test"]
    assert any(f"test accuracy {t['accuracy']:.4f}" in line and f"(n={t['n']})" in line for line in lines), lines[-3:]


def test_a_class_never_predicted_is_warned(tiny_roberta, tmp_path):
    """90/10 with texts that say nothing about the label: the model learns the prior and predicts
    the majority class only; accuracy 0.9 looks fine, macro-F1 ~0.47 does not."""
    from lorafit.train.run import run_training

    data = tmp_path / "imbalanced.csv"
    pd.DataFrame({"text": ["the same words today"] * 200, "label": ["common"] * 180 + ["rare"] * 20}).to_csv(data, index=False)
    lines = []
    run = tmp_path / "run"
    run_training(tiny_config(tiny_roberta, data, train__epochs=3), run, log=lines.append)
    assert any("classes are imbalanced" in x and "'common' 90%" in x and "train.metric" in x for x in lines), lines
    warned = [x for x in lines if x.startswith("warning:") and "never predicts 'rare'" in x]
    assert warned and "macro-F1" in warned[0], lines
    ev = json.loads((run / "eval.json").read_text())
    assert any("never predicts 'rare'" in w for w in ev["warnings"])
    assert "never predicts 'rare'" in (run / "report.md").read_text()


def test_balanced_learnable_data_warns_nothing(trained_run):
    run_dir, _, result = trained_run
    assert "warnings" not in result and "warnings" not in json.loads((run_dir / "eval.json").read_text())


def test_version():
    proc = run_cli("--version")
    from lorafit import __version__

    assert proc.returncode == 0 and proc.stdout.strip() == f"lorafit {__version__}"


def test_every_option_says_what_it_does():
    """Issue 25: `predict --batch-size` had no help text."""
    import argparse

    from lorafit.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = [f"{name} {a.option_strings[0] if a.option_strings else a.dest}" for name, p in sub.choices.items()
               for a in p._actions if not a.help]
    assert missing == [] and {"train", "evaluate", "predict", "export", "budget", "sweep", "serve"} <= set(sub.choices)


def test_a_missing_config_is_refused_before_torch_loads(tmp_path):
    """It took 5 s: torch (and transformers) were imported before the config file was looked at."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    code = ("import sys; from lorafit.cli import main; code = main(['train', '--config', 'nope.yaml']); "
            "print(code, 'torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120,
                          env={"PYTHONPATH": src, "PATH": "/usr/bin:/bin"})
    assert proc.stdout.split() == ["2", "False"], proc.stderr
    assert proc.stderr.strip() == "error: nope.yaml: config file not found"


def test_a_short_run_logs_every_step_and_says_how_many_texts_were_cut(tiny_roberta, synth_csv, tmp_path):
    """Issue 25: a 90-step run logged every 20 steps drew 4 points; 42 of 3,275 reviews were cut at
    max_length without a word. train.log_every: auto logs a run under 100 steps at every step, and the
    run log counts the texts longer than max_length per split."""
    from transformers import AutoTokenizer

    from lorafit.report import read_metrics
    from lorafit.train.recipe import Recipe

    test = tmp_path / "test.csv"
    pd.read_csv(synth_csv).tail(30).to_csv(test, index=False)
    # 96 training items, batch 8: 12 steps in the one epoch; max_length 12 cuts the longer texts
    cfg = tiny_config(tiny_roberta, synth_csv, data__limit=120, train__batch_size=8, train__epochs=1,
                      train__log_every="auto", data__max_length=12, data__test=test)
    lines = []
    recipe = Recipe(cfg, tmp_path / "run", log=lines.append).setup()
    recipe.train()
    recipe.finish()
    assert recipe.total_steps == 12
    assert [r["step"] for r in read_metrics(tmp_path / "run") if r["type"] == "train"] == list(range(1, 13))
    assert any(x.endswith("; training loss logged every 1 step") for x in lines), lines
    tok = AutoTokenizer.from_pretrained(tiny_roberta)
    for split, texts in (("train", recipe.data.train.texts), ("validation", recipe.data.val.texts),
                         ("test", recipe.test.texts)):
        longer = sum(len(ids) > 12 for ids in tok(texts)["input_ids"])
        assert 0 < longer < len(texts), split
        note = (f"data: {longer} of {len(texts)} {split} texts were longer than max_length 12 tokens and were "
                "truncated (data.truncation: head)")
        assert note in lines, (split, lines)


def test_log_every_auto_gives_50_points_and_at_most_every_20_steps():
    from lorafit.config import load_config
    from lorafit.train.header import log_interval

    assert load_config(None, []).train.log_every == "auto"
    assert [log_interval("auto", n) for n in (1, 49, 90, 99, 100, 999, 1000, 100_000)] == [1, 1, 1, 1, 2, 19, 20, 20]
    for total in range(50, 3000):
        assert total // log_interval("auto", total) >= 50
    assert log_interval(7, 90) == 7  # a number given is kept
