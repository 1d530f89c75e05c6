"""Load a base encoder and its tokenizer from the hub or a local folder, safely.

Weights are read from safetensors only unless `model.allow_pickle_weights` is set (then
transformers' torch.load runs with weights_only=True). `trust_remote_code` is off unless set.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..config import ModelConfig
from ..errors import LorafitError
from .heads import NEW_WEIGHTS_ATTR

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def check_local_folder(cfg: ModelConfig, need_weights: bool) -> None:
    """A local model folder must hold config.json and, when weights are needed, safetensors weights."""
    p = Path(cfg.name)
    if not p.exists():
        return  # a hub id: transformers reports its own errors, wrapped below
    if not (p / "config.json").is_file():
        raise LorafitError(f"model.name: {p} has no config.json; point it at a Hugging Face model folder")
    if not need_weights:
        return
    if any((p / f).is_file() for f in SAFE_WEIGHTS):
        return
    if any((p / f).is_file() for f in PICKLE_WEIGHTS):
        if cfg.allow_pickle_weights:
            return
        raise LorafitError(f"model.name: {p} has only pickled weights (pytorch_model.bin); convert them to safetensors "
                           "or set model.allow_pickle_weights: true (loaded with torch.load weights_only=True)")
    raise LorafitError(f"model.name: {p} has no weights (model.safetensors); it holds only "
                       f"{', '.join(sorted(x.name for x in p.iterdir())) or 'nothing'}")


def _wrap(what: str, name: str, e: Exception) -> LorafitError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
    return LorafitError(f"model.name: could not load {what} '{name}' ({first})")


def load_tokenizer(cfg: ModelConfig, source: str | None = None):
    from transformers import AutoTokenizer

    name = source or cfg.name
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise _wrap("the tokenizer of", name, e) from None


def load_model_config(cfg: ModelConfig, num_labels: int, label_names: list[str]):
    from transformers import AutoConfig

    check_local_folder(cfg, need_weights=False)
    try:
        return AutoConfig.from_pretrained(
            cfg.name, num_labels=num_labels, id2label=dict(enumerate(label_names)),
            label2id={n: i for i, n in enumerate(label_names)}, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise _wrap("the config of", cfg.name, e) from None


@contextlib.contextmanager
def quiet_transformers():
    """transformers' load report lists the classification head as MISSING (expected: lorafit trains
    it, or the adapter restores it) and draws a bar per load; both only alarm users, so mute them."""
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def load_base(cfg: ModelConfig, label_names: list[str], *, weights: bool = True):
    """AutoModelForSequenceClassification with the label map. weights=False builds it on the meta
    device from config.json alone: exact shapes for parameter counting, no memory, no download."""
    from transformers import AutoModelForSequenceClassification

    mcfg = load_model_config(cfg, len(label_names), label_names)
    mcfg._attn_implementation = cfg.attn_implementation
    if not weights:
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(mcfg, trust_remote_code=cfg.trust_remote_code)
    check_local_folder(cfg, need_weights=True)
    try:
        with quiet_transformers():
            model, info = AutoModelForSequenceClassification.from_pretrained(
                cfg.name, config=mcfg, trust_remote_code=cfg.trust_remote_code,
                use_safetensors=None if cfg.allow_pickle_weights else True, output_loading_info=True)
    except Exception as e:
        raise _wrap("the model", cfg.name, e) from None
    # heads.py refuses to freeze a layer that is freshly initialised (e.g. a BERT checkpoint without pooler)
    setattr(model, NEW_WEIGHTS_ATTR, set(info.get("missing_keys", ())))
    return model


def checkpoint_keys(cfg: ModelConfig) -> set[str] | None:
    """Parameter names stored in a local safetensors checkpoint (header only, no tensors read);
    None when that cannot be told without loading (hub id, config-only folder)."""
    import json

    p = Path(cfg.name)
    if (p / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(p / "model.safetensors"), "pt") as f:
            return set(f.keys())
    if (p / "model.safetensors.index.json").is_file():
        return set(json.loads((p / "model.safetensors.index.json").read_text())["weight_map"])
    return None
