"""Load a finished run, classify texts in length-sorted batches, restore input order, write CSV."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .data import Collator, LengthGroupedBatches, TokenDataset, join_texts, load_labelled, tokenize
from .errors import LorafitError
from .metrics import classification_metrics
from .runs import atomic_write_text, load_trained, read_run
from .tables import read_table

ID_COLUMNS = ("ID", "id", "Id")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.inference_mode()
def predict_logits(model, tokenizer, texts: list[str], max_length: int, batch_size: int = 128,
                   device: torch.device | None = None) -> np.ndarray:
    """Logits in input order. Batches are sorted by length so padding stays minimal."""
    device = device or next(model.parameters()).device
    ds = TokenDataset(tokenize(tokenizer, texts, max_length))
    sampler = LengthGroupedBatches(ds.lengths(), batch_size, shuffle=False)
    collate = Collator(tokenizer.pad_token_id)
    out = np.zeros((len(ds), model.config.num_labels), dtype=np.float32)
    with tqdm(total=len(ds), desc="predicting", unit=" samples", unit_scale=True, disable=len(ds) < batch_size) as bar:
        for idx in sampler:
            batch = collate([ds[i] for i in idx])
            logits = model(**{k: v.to(device) for k, v in batch.items()}).logits
            out[np.asarray(idx)] = logits.float().cpu().numpy()
            bar.update(len(idx))
    return out


def read_inputs(path: str, text_cfg, allow_pickle: bool) -> tuple[str, list, list[str]]:
    """(id column name, ids, texts) of an unlabelled input; ids are the row index when no ID column."""
    df = read_table(path, allow_pickle=allow_pickle, field="--input")
    texts = join_texts(df, text_cfg, path)
    col = next((c for c in ID_COLUMNS if c in df.columns), None)
    if col is None:
        return "ID", list(range(len(df))), texts
    ids = df[col].tolist()
    dup = df[col][df[col].duplicated()].tolist()
    if dup:
        raise LorafitError(f"{path}: column '{col}' has {len(dup)} duplicate ID(s), first {dup[0]!r}; IDs must be unique")
    return col, ids, texts


def predict_file(run_dir: str, input_path: str, output_path: str, *, allow_pickle: bool = False,
                 batch_size: int = 128, with_logits: bool = False) -> int:
    out = Path(output_path)
    if not out.parent.exists():
        raise LorafitError(f"--output: folder {out.parent} does not exist")
    cfg, _ = read_run(run_dir)
    col, ids, texts = read_inputs(input_path, cfg.data, allow_pickle)  # bad input: refused before the model loads
    model, tokenizer, cfg, names = load_trained(run_dir, merge=True, device=default_device())
    logits = predict_logits(model, tokenizer, texts, cfg.data.max_length, batch_size)
    frame = pd.DataFrame({col: ids, "label": logits.argmax(-1).astype(int)})
    if with_logits:
        for k, name in enumerate(names):
            frame[f"logit_{name}"] = logits[:, k]
    buf = io.StringIO()
    frame.to_csv(buf, index=False, float_format="%.7g")
    atomic_write_text(out, buf.getvalue())
    return len(ids)


def evaluate_file(run_dir: str, data_path: str, *, allow_pickle: bool = False, batch_size: int = 128) -> dict:
    cfg, names = read_run(run_dir)
    data_cfg = cfg.data.model_copy(update={"allow_pickle": allow_pickle or cfg.data.allow_pickle})
    ex, _, _ = load_labelled(data_path, data_cfg, cfg.data.test_split, names, "--data")  # checked before the model loads
    model, tokenizer, cfg, names = load_trained(run_dir, merge=True, device=default_device())
    logits = predict_logits(model, tokenizer, ex.texts, cfg.data.max_length, batch_size)
    return classification_metrics(ex.labels, logits.argmax(-1), names)
