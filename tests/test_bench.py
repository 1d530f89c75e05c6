"""The benchmark runs end to end on a tiny input (no timing is asserted: benchmarks are not tests)."""
import pytest
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_compare_runs_on_tiny_input(tiny_roberta, synth_csv, tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# Speed: an older table\n\n## Optional switches (appended by switches.py)\n\n| kept |\n")
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "compare.py"), "--model", str(tiny_roberta),
                           "--data", str(synth_csv), "--limit", "200", "--val-size", "40", "--max-length", "32",
                           "--eval-every", "2", "--dtypes", "float32,bfloat16", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for row in ("train samples/s", "time to anchor's final val accuracy", "final val accuracy", "predict samples/s",
                "peak RSS (MB)", "peak RSS while training (MB)"):
        assert f"| {row}" in text
    # one column pair per frozen-base dtype, each row filled for both
    assert "| lorafit, float32 base | lorafit, float32 base vs anchor | lorafit, bfloat16 base |" in text
    assert all(line.count("|") == 7 for line in text.splitlines() if line.startswith("| train samples/s"))
    # the whole-process rows: the anchor's process against `lorafit train`'s, one per dtype, on the warmed cache
    assert all(line.count("|") == 7 for line in text.splitlines() if line.startswith("| whole process"))
    assert "both on a bytecode cache compiled before timing" in text and "lorafit train (bfloat16) " in text
    assert "lorafit (bfloat16) evaluations" in text
    assert "equal the plain unmerged model's: True" in text
    assert "peak RSS by phase (MB): anchor {'setup': " in text and "'predict unmerged': " in text
    assert "older table" not in text and text.endswith("## Optional switches (appended by switches.py)\n\n| kept |\n")


@pytest.mark.slow
def test_switches_runs_on_tiny_input(tiny_roberta, synth_csv, tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "switches.py"), "--model", str(tiny_roberta),
                           "--data", str(synth_csv), "--limit", "300", "--steps", "6", "--max-length", "32", "--variants", "default,bf16",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert "| default (fp32, eager) |" in text and "| bf16 autocast |" in text and "failed" not in text


@pytest.mark.slow
def test_quality_runs_on_tiny_input(tiny_bert, synth_csv, tmp_path):
    """bench/quality.py starts and writes its table (3 rows x 1 seed on a tiny BERT; numbers are not checked)."""
    out = tmp_path / "QUALITY.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--model", str(tiny_bert),
                           "--data", str(synth_csv), "--limit", "120", "--val-size", "40", "--max-length", "32",
                           "--epochs", "1", "--seeds", "0", "--set", "train.batch_size=16", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    for row in ("| (a) | seeds' recipe", "| (b) | full fine-tuning", "| (c) | lorafit best layout"):
        assert row in text
    assert "lorafit train --config configs/agnews-minilm-best.yaml --seeds 0" in text


@pytest.mark.slow
def test_quality_sst2_rows_seed_by_seed_keep_the_ag_news_section(tiny_bert, tmp_path):
    """--dataset sst2: binary rows (the AG News configs renamed to two labels, configs/sst2-minilm.yaml),
    --rows order, and the AG News section of --out is kept."""
    import pandas as pd

    data = tmp_path / "bin.csv"
    words = ["good fine great", "bad awful poor"]
    pd.DataFrame({"text": [f"{words[i % 2]} {i}" for i in range(160)], "label": [i % 2 for i in range(160)]}).to_csv(data, index=False)
    out = tmp_path / "QUALITY.md"
    ag = "# Accuracy per parameter: MiniLM-L6 on AG News\n\n| (a) | kept |\n"
    out.write_text(ag)
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "quality.py"), "--dataset", "sst2", "--model", str(tiny_bert),
                           "--data", str(data), "--limit", "120", "--val-size", "40", "--max-length", "32", "--rows", "c,a",
                           "--seeds", "0", "--set", "train.batch_size=16", "--out", str(out)],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith(ag) and "# Accuracy per parameter: MiniLM-L6 on SST-2\n" in text
    rows = [x for x in text.splitlines() if x.startswith("| (")]
    assert rows[1].startswith("| (c) | solver's pick") and rows[2].startswith("| (a) | seeds' recipe"), rows
    assert "lorafit train --config configs/sst2-minilm.yaml --seeds 0" in text
    assert "--set 'data.label_names=[negative,positive]'" in text and "--set data.limit=120" in text


@pytest.mark.slow
def test_profile_step_runs_on_tiny_input(tiny_roberta, synth_csv):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "profile_step.py"), "--model", str(tiny_roberta),
                           "--data", str(synth_csv), "--steps", "3", "--warmup", "2", "--set", "data.max_length=32"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "aten::addmm" in proc.stdout and "minor page faults per step: " in proc.stdout


@pytest.mark.slow
def test_predict_speed_runs_on_a_finished_run(trained_run, synth_csv, tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "predict_speed.py"), "--run", str(trained_run[0]),
                           "--data", str(synth_csv), "--limit", "50", "--batch", "16", "--repeats", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [x for x in out.read_text().splitlines() if x.startswith("| ") and "samples/s" not in x]
    assert len(rows) == 4 and rows[0].startswith("| default (as lorafit predict) |")
    assert all(x.endswith("| True |") for x in rows), rows  # every variant gives the plain model's labels


@pytest.mark.slow
def test_merge_dtype_runs_on_a_finished_run(trained_run, synth_csv):
    """bench/merge_dtype.py prints its four prediction paths; the 16-bit ones with an agreement share,
    a finite logit difference and a speed (numbers are not judged on a tiny random model)."""
    import re

    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "merge_dtype.py"), "--run", str(trained_run[0]),
                           "--data", str(synth_csv), "--limit", "40", "--batch-size", "16"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [x for x in proc.stdout.splitlines() if x.startswith("| ") and "samples/s" not in x]
    assert len(rows) == 4 and "| 100% | 0 |" in rows[0] and "| 100% | 0 |" in rows[1], proc.stdout
    for row in rows[2:]:
        agree, diff, sps = re.fullmatch(r"\| bfloat16 base, .* \| ([\d.]+)% \| ([\d.]+) \| ([\d.]+) \|", row).groups()
        assert 0 <= float(agree) <= 100 and float(diff) < 1e3 and float(sps) > 0, row


@pytest.mark.slow
def test_quality_suite_runs_zero_config_and_full_fine_tuning_on_tiny_input(tiny_bert, tmp_path):
    """--suite on 60 rows of CR with a tiny BERT: both systems run, the table and the commands are written,
    and a second call reuses the finished results (numbers are not checked)."""
    out, work = tmp_path / "QUALITY.md", tmp_path / "work"
    out.write_text("# Accuracy per parameter: MiniLM-L6 on AG News\n\nkept\n")
    cmd = [sys.executable, str(ROOT / "bench" / "quality.py"), "--suite", "--tasks", "cr", "--systems", "zero,full",
           "--rows", "60", "--model", str(tiny_bert), "--work", str(work), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = out.read_text()
    assert text.startswith("# Suite: zero-config vs full fine-tuning") and "kept" in text
    assert "| cr | " in text and "missing" not in text and "lorafit train --data" in text
    assert sorted(p.name for p in (work / "results").iterdir()) == ["cr-full-seed0.json", "cr-zero-seed0.json"]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert again.returncode == 0 and "suite: cr" not in again.stdout
