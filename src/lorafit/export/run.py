"""`lorafit export RUN_DIR --format onnx|merged --out DIR`, i.e. export_run(ExportSettings): build in a
temporary folder, check the result against lorafit's own logits on the check texts, and only then move
it to --out.

An ONNX export holds model.onnx (fp32; model.int8.onnx with --quantize int8), the tokenizer files,
config.json (the label map, for optimum's ORTModelForSequenceClassification), labels.json (label
names in logit order) and export.json (what was checked, and how to feed the graph). A merged
export holds a transformers model folder (config.json, model.safetensors, tokenizer) with
labels.json and export.json."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .. import __version__
from ..errors import LorafitError
from . import check as checking
from .folder import MANIFEST, check_out, publish
from .settings import ExportSettings

def export_run(settings: ExportSettings, log: Callable = print) -> dict:
    """Export a finished run; returns export.json's content. Bad input and a failed check raise
    LorafitError with nothing written."""
    from ..runs.directory import read_run
    from ..runs.weights import weights_folder

    if not isinstance(settings, ExportSettings):
        raise TypeError(f"export_run() takes an ExportSettings, not {type(settings).__name__}")
    s = settings  # short: read on every line below
    run_dir, out, fmt, check, batch_size = s.run_dir, s.out, s.format, s.check, s.batch_size
    cfg, names = read_run(run_dir)
    if not (run_dir / weights_folder(cfg)).is_dir():
        raise LorafitError(f"{run_dir}: no trained weights ({weights_folder(cfg)}/ missing); did training finish?")
    check_out(out, s.overwrite, {"RUN_DIR": run_dir, "--check": check})
    if fmt == "merged":
        from .merged import check_mappable

        check_mappable(cfg.head.type)
    where, texts, pairs = checking.check_texts(run_dir, cfg, check, allow_pickle=s.allow_pickle,
                                               text_columns=s.text_columns, delimiter=s.delimiter,
                                               input_format=s.input_format)
    ref = _lorafit_logits(run_dir, texts, pairs, batch_size)
    manifest = {"format": fmt, "run": str(run_dir.resolve()), "lorafit": __version__, "labels": names,
                "max_length": cfg.data.max_length, "head": cfg.head.type, "model": cfg.model.name,
                "task": cfg.data.task, "truncation": cfg.data.truncation, "text_pair_column": cfg.data.text_pair_column,
                "check": {"texts": where, "n": len(texts), "atol": checking.ATOL}}
    with tempfile.TemporaryDirectory(prefix="lorafit-export-") as tmp:
        built = Path(tmp) / "export"
        built.mkdir()
        plain = _plain_merged(run_dir)
        if fmt == "onnx":
            _build_onnx(plain, built, texts, pairs, ref, s.quantize, s.min_agreement, manifest, batch_size, log)
        else:
            _build_merged(plain, built, texts, pairs, ref, manifest, batch_size, log)
        plain.tokenizer.save_pretrained(built)
        (built / "labels.json").write_text(json.dumps(names, indent=2), encoding="utf-8")
        for extra in ("thresholds.json", "calibration.json"):  # multi_label's thresholds; predict --probs' temperature
            if (run_dir / extra).is_file():
                shutil.copyfile(run_dir / extra, built / extra)
        (built / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        publish(built, out)
    log(f"exported {run_dir} as {fmt} to {out}")
    return manifest


def _lorafit_logits(run_dir: Path, texts: list[str], pairs, batch_size: int):
    """What `lorafit predict` computes: its own load path, speed settings and engine (on the CPU)."""
    from ..infer import engine
    from ..infer.loaded import load_run

    return engine.logits(load_run(run_dir, device="cpu"), texts, pairs, batch_size=batch_size, desc="checking")


def _plain_merged(run_dir: Path):
    """The run merged with none of lorafit's speed paths: torch's own modules only, as an exporter needs."""
    from ..infer.loaded import load_run

    return load_run(run_dir, device="cpu", first_token=False, packed=False)


def _refuse(what: str, agreement: checking.Agreement, rule: str) -> LorafitError:
    return LorafitError(f"export: {what} does not match lorafit on the check texts ({agreement.describe()}; needed {rule}); "
                        "nothing was written")


def _build_onnx(plain, built: Path, texts, pairs, ref, quantize, min_agreement, manifest, batch_size, log) -> None:
    """The graph, checked through the engine (the run's encoding: truncation, pairs) on ONNX Runtime."""
    from ..infer import engine
    from . import onnx as ox

    def ort_logits(path: Path):
        return engine.logits(plain.with_session(ox.session(path)), texts, pairs, batch_size=batch_size, desc="checking")

    model = plain.model
    path = built / "model.onnx"
    try:
        inputs = ox.export_onnx(model, plain.tokenizer, path, pairs=pairs is not None)
    except Exception as e:
        raise LorafitError(f"export: torch.onnx.export failed for {type(model).__name__} ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:300]}); nothing was written") from e
    fp32 = ort_logits(path)
    agreement = checking.compare(ref, fp32)
    if not agreement.passes():
        raise _refuse("the ONNX model", agreement, f"logits within {checking.ATOL:g} and every label equal")
    log(f"check: ONNX Runtime fp32 vs lorafit on {len(texts)} texts: {agreement.describe()}")
    manifest["check"].update(max_abs_diff=agreement.max_abs_diff, labels_equal=agreement.labels_equal)
    manifest.update(files={"fp32": path.name}, inputs=list(inputs), outputs=["logits"], opset=ox.OPSET)
    model.config.to_json_file(built / "config.json")
    if quantize == "int8":
        q = built / "model.int8.onnx"
        ox.quantize_int8(path, q)
        int8 = checking.int8_verdict(fp32, ort_logits(q), min_agreement)
        log(f"check: int8 vs fp32 on {len(texts)} texts: labels agree on {int8.labels_equal}/{int8.n} "
            f"({100 * int8.fraction:.2f}%), max |logit difference| {int8.max_abs_diff:.3g}")
        manifest["files"]["int8"] = q.name
        manifest["int8"] = {"label_agreement": int8.fraction, "labels_equal": int8.labels_equal, "n": int8.n,
                            "max_abs_diff": int8.max_abs_diff, "min_agreement_pct": min_agreement}


def _build_merged(plain, built: Path, texts, pairs, ref, manifest, batch_size, log) -> None:
    from ..infer import engine
    from .merged import load_merged, save_merged

    save_merged(plain.model, built)
    reloaded = plain.with_model(load_merged(built))
    agreement = checking.compare(ref, engine.logits(reloaded, texts, pairs, batch_size=batch_size, desc="checking"))
    if not agreement.passes():
        raise _refuse("the merged model, reloaded by AutoModelForSequenceClassification", agreement,
                      f"logits within {checking.ATOL:g} and every label equal")
    log(f"check: merged model reloaded by transformers vs lorafit on {len(texts)} texts: {agreement.describe()}")
    manifest["check"].update(max_abs_diff=agreement.max_abs_diff, labels_equal=agreement.labels_equal)
    manifest["files"] = {"model": "model.safetensors"}
