"""The server a user writes by hand today (bench/serve_load.py's row (c)): FastAPI +
transformers.pipeline("text-classification") over the merged PEFT model, one request at a time.

    python bench/serve_anchor.py RUN_DIR PORT
"""
from __future__ import annotations

import sys
import threading
from pathlib import Path

from pydantic import BaseModel


class Req(BaseModel):  # at module level: FastAPI resolves the annotation from here
    texts: list[str]


def build(run_dir: str):
    import yaml
    from fastapi import FastAPI
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, pipeline

    run = Path(run_dir)
    base = yaml.safe_load((run / "config.yaml").read_text())["model"]["name"]
    config = AutoConfig.from_pretrained(str(run / "adapter" / "classifier_config.json"))
    model = AutoModelForSequenceClassification.from_pretrained(base, config=config)
    model = PeftModel.from_pretrained(model, str(run / "adapter")).merge_and_unload().eval()
    clf = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(str(run / "adapter")),
                   device=-1, truncation=True, max_length=128)
    lock = threading.Lock()  # a pipeline is not meant to be called from several threads at once
    app = FastAPI()

    @app.post("/predict")
    def predict(req: Req):
        with lock:
            return {"labels": [o["label"] for o in clf(req.texts)]}

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


if __name__ == "__main__":
    import uvicorn

    app = build(sys.argv[1])
    print(f"serving on http://127.0.0.1:{sys.argv[2]}", file=sys.stderr, flush=True)
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
