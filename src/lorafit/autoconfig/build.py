"""`lorafit train --data FILE`: a complete RunConfig from the data alone, with a reason for every choice.

The order follows what each choice needs: columns and task (columns.py) -> the rows as lorafit reads
them (data/examples.py, the one reader) -> split, lengths, size rules (rules.py) -> the solver's layout
within the budget (model/solver.py) -> the user's --set values, which win over every choice."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from ..config import RunConfig, apply_overrides, move_keys, resolve_path, validate_config
from ..errors import LorafitError
from . import rules
from .columns import detect

DEFAULT_MODEL = "roberta-base"
DEFAULT_BUDGET = 1_000_000
LENGTH_SAMPLE = 5000  # texts tokenised to measure lengths (seeded sample): a percentile needs no more


def auto_config(data: str, *, model: Optional[str] = None, budget: Optional[int] = None, test: Optional[str] = None,
                sets: Sequence[str] = (), log: Callable[[str], None] = print) -> tuple[RunConfig, dict[str, str]]:
    """(the resolved config, {dotted key: why}) for training on `data`; each choice logged on one line."""
    from ..data.tables import read_table

    cwd = Path.cwd()
    given = move_keys(apply_overrides({}, list(sets)))
    train = resolve_path(data, [cwd], data=True)
    notes: dict[str, str] = {"data.train": "--data"}
    raw: dict = {"model": {"name": resolve_path(model, [cwd]) if model else DEFAULT_MODEL},
                 "data": {"train": train}, "adapter": {"method": "lora"}, "optim": {}, "train": {},
                 "budget": {"max_trainable": budget or DEFAULT_BUDGET}}
    notes["model.name"] = "--model" if model else f"the default ({DEFAULT_MODEL}; offline, give --model DIR)"
    notes["budget.max_trainable"] = "--budget" if budget else f"the default budget, {DEFAULT_BUDGET:,} trainable parameters"
    if test:
        raw["data"]["test"], notes["data.test"] = resolve_path(test, [cwd], data=True), "--test"
    frame = read_table(train, field="--data")
    cols = detect(frame, data, given.get("data", {}))
    raw["data"].update(text_columns=cols.text_columns, label_column=cols.label_column, task=cols.task)
    if cols.text_pair_column:
        raw["data"]["text_pair_column"] = cols.text_pair_column
    if cols.label_delimiter:
        raw["data"]["label_delimiter"] = cols.label_delimiter
    notes.update(cols.reasons)
    names = _rows_and_rules(raw, notes)
    _layout(raw, notes, names)
    raw = move_keys(apply_overrides(raw, list(sets)))
    for item in sets:
        notes[item.split("=", 1)[0].strip()] = "set by --set"
    cfg = validate_config(raw, "--data", [s.split("=", 1)[0].strip() for s in sets])
    for key, why in notes.items():
        log(f"auto: {key} = {_value(cfg, key)} ({why})")
    return cfg, notes


def _value(cfg: RunConfig, key: str):
    node = cfg
    for part in key.split("."):
        node = getattr(node, part, None)
    # a count kept in a float field (val_size 339.0, epochs 4.0) reads as the count it is
    return int(node) if isinstance(node, float) and node.is_integer() and node >= 1 else node


def _rows_and_rules(raw: dict, notes: dict) -> list[str]:
    """The split, max_length and the size rules, from the rows lorafit will train on; returns the label names."""
    from ..config import DataConfig
    from ..data.examples import load_labelled

    dc = DataConfig(**{k: v for k, v in raw["data"].items() if k not in ("train", "test")})
    ex, names, _ = load_labelled(raw["data"]["train"], dc, "train", None, "--data")
    n = len(ex)
    if n < 10:
        raise LorafitError(f"--data: {raw['data']['train']}: {n} usable row(s); give at least 10 labelled texts")
    val, notes["data.val_size"] = rules.val_size(n)
    n_train = n - (val if val >= 1 else math.ceil(val * n))
    raw["data"]["val_size"] = val
    raw["data"]["max_length"], notes["data.max_length"] = rules.max_length(
        _token_lengths(raw, ex), _model_limit(raw["model"]["name"]))
    batch, notes["train.batch_size"] = rules.batch_size(n_train)
    epochs, notes["train.epochs"] = rules.epochs(n_train)
    steps_per_epoch = math.ceil(n_train / batch)
    raw["train"].update(batch_size=batch, epochs=epochs)
    raw["optim"]["lr"], notes["optim.lr"] = rules.learning_rate(n_train)
    raw["optim"]["warmup"], notes["optim.warmup"] = rules.warmup(steps_per_epoch * epochs)
    raw["train"]["eval_every"], notes["train.eval_every"] = rules.evaluation(steps_per_epoch, epochs)
    raw["train"]["early_stopping"] = rules.PATIENCE
    notes["train.early_stopping"] = (f"stop after {rules.PATIENCE} evaluations without a better validation "
                                     "train.metric; the best checkpoint is kept")
    raw["train"]["metric"], notes["train.metric"] = rules.metric(dc.task, ex.labels)
    raw["train"]["final_on_val"], notes["train.final_on_val"] = rules.final_on_val(n_train, n - n_train)
    return names


def _token_lengths(raw: dict, ex) -> list[int]:
    from ..config import ModelConfig
    from ..model.load import load_tokenizer, quiet_transformers

    rng = np.random.default_rng(0)
    idx = rng.permutation(len(ex))[:LENGTH_SAMPLE]
    texts = [ex.texts[i] for i in idx]
    pairs = None if ex.pairs is None else [ex.pairs[i] for i in idx]
    with quiet_transformers():
        tok = load_tokenizer(ModelConfig(name=raw["model"]["name"]))
        ids = tok(texts, pairs, truncation=False)["input_ids"] if pairs else tok(texts, truncation=False)["input_ids"]
    return [len(x) for x in ids]


def _model_limit(name: str) -> Optional[int]:
    from transformers import AutoConfig

    from ..config import ModelConfig
    from ..model.load import load_tokenizer, model_token_limit, quiet_transformers

    with quiet_transformers():
        mcfg = AutoConfig.from_pretrained(name)
        return model_token_limit(mcfg, load_tokenizer(ModelConfig(name=name)))


def _layout(raw: dict, notes: dict, names: list[str]) -> None:
    """The solver's pick within budget.max_trainable (the layout `lorafit budget --solve` prints), alpha = r."""
    from ..model.solver import pick, solve

    cfg = validate_config(raw, "--data")
    layouts, _ = solve(cfg, names)
    best = pick(layouts)
    if best is None:
        raise LorafitError(f"--budget: {cfg.budget.max_trainable:,} trainable parameters fit no LoRA layout of "
                           f"{cfg.model.name}; raise it (lorafit budget --solve lists what fits)")
    raw["adapter"].update(targets=list(best.targets), layers=None if best.layers is None else list(best.layers),
                          r=best.r, alpha=best.r, train_layernorm=best.layernorm)
    raw["head"] = {"type": best.head}
    why = f"the solver's pick within {cfg.budget.max_trainable:,}: {best.describe()}, {best.trainable:,} trainable"
    for key in ("adapter.targets", "adapter.layers", "adapter.r", "adapter.train_layernorm", "head.type"):
        notes[key] = why if key == "adapter.targets" else "the solver's pick (see adapter.targets)"
    notes["adapter.alpha"] = "= r (scale 1), as in the tuned configs"
