"""bench/gpu_check.py runs end to end (its --smoke mode on CPU, a tiny model) and reports both sides."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_smoke(tiny_roberta, tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--smoke", "--config-dir",
                           str(tiny_roberta), "--json", str(out)], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for side in ("lorafit", "notebook"):
        assert r[side]["samples_per_s"] > 0 and r[side]["tflops"] > 0
    assert r["notebook"]["tokens_per_item"] == 32 and r["lorafit"]["tokens_per_item"] < 32  # padded vs dynamic
    assert "| lorafit |" in proc.stdout and "| notebook |" in proc.stdout
    no_gpu = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--config-dir", str(tiny_roberta)],
                            capture_output=True, text=True, timeout=120, env={"PYTHONPATH": str(ROOT / "src"), "PATH": "/usr/bin:/bin"})
    assert no_gpu.returncode == 2 and no_gpu.stderr.startswith("error: no CUDA device")
