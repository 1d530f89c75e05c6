"""Load a base encoder and its tokenizer from the hub or a local folder, safely.

Weights are read from safetensors only unless `model.allow_pickle_weights` is set (then
transformers' torch.load runs with weights_only=True). `trust_remote_code` is off unless set.
"""
from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

import torch

from ..config import ModelConfig
from ..data.tables import looks_like_path
from ..errors import LorafitError
from .heads import NEW_WEIGHTS_ATTR

SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")


def check_local_folder(cfg: ModelConfig, need_weights: bool, need_tokenizer: bool = False) -> None:
    """A local model folder must hold config.json and, when weights are needed, safetensors weights;
    when a tokenizer is needed, its files (without them AutoTokenizer builds one that knows only the
    special tokens, and training runs to chance on [UNK]s). A hub id is checked for reachability."""
    p = Path(cfg.name).expanduser()
    if not p.exists():
        if looks_like_path(cfg.name):
            raise LorafitError(f"model.name: {os.path.abspath(p)} does not exist; point it at a Hugging Face model folder, "
                               "or give a hub id (e.g. roberta-base)")
        check_hub(cfg.name)
        return
    if not (p / "config.json").is_file():
        raise LorafitError(f"model.name: {p} has no config.json; point it at a Hugging Face model folder")
    if need_weights:
        _check_weights(cfg, p)
    if need_tokenizer and not has_tokenizer_files(p):
        raise LorafitError(f"model.name: no tokenizer files in {p} (tokenizer.json, vocab.txt, vocab.json + merges.txt "
                           "or a sentencepiece .model); copy the tokenizer of the checkpoint into it")


def _check_weights(cfg: ModelConfig, p: Path) -> None:
    if any((p / f).is_file() for f in SAFE_WEIGHTS):
        return
    if any((p / f).is_file() for f in PICKLE_WEIGHTS):
        if cfg.allow_pickle_weights:
            return
        raise LorafitError(f"model.name: {p} has only pickled weights (pytorch_model.bin); convert them to safetensors "
                           "or set model.allow_pickle_weights: true (loaded with torch.load weights_only=True)")
    raise LorafitError(f"model.name: {p} has no weights (model.safetensors); it holds only "
                       f"{', '.join(sorted(x.name for x in p.iterdir())) or 'nothing'}")


def has_tokenizer_files(p: Path) -> bool:
    """A vocabulary in any format AutoTokenizer reads; tokenizer_config.json alone only names a class."""
    return ((p / "tokenizer.json").is_file() or (p / "vocab.txt").is_file()
            or ((p / "vocab.json").is_file() and (p / "merges.txt").is_file()) or any(p.glob("*.model")))


def check_hub(name: str) -> None:
    """A hub id not in the local cache, while the hub is out of reach, fails now in one line instead of
    after ~30 s of download retries. A cached one is left to transformers, which falls back to the cache."""
    from huggingface_hub import constants, try_to_load_from_cache

    try:
        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # not a valid repo id: transformers says why
        return
    if cached:
        return
    why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else \
        None if hub_reachable(constants.ENDPOINT) else f"the hub ({constants.ENDPOINT}) cannot be reached"
    if why:
        raise LorafitError(f"model.name: '{name}' is not a local folder, is not in the Hugging Face cache, and {why}; "
                           "point model.name at a model folder")


@functools.lru_cache(maxsize=None)
def hub_reachable(endpoint: str, timeout: float = 2.0) -> bool:
    """A TCP connection to the endpoint (or to the proxy that requests to it go through) within
    `timeout` seconds. Run in a thread because name resolution ignores socket timeouts and can hang
    for much longer on a machine without network."""
    import socket
    import threading
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    url = urlsplit(endpoint)
    proxy = getproxies().get(url.scheme)
    if proxy and not proxy_bypass(url.hostname or ""):
        url = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = url.port or (443 if url.scheme == "https" else 80)
    ok: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=connect, daemon=True)
    t.start()
    t.join(timeout + 0.5)
    return bool(ok)


def _wrap(what: str, name: str, e: Exception) -> LorafitError:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0][:240]
    return LorafitError(f"model.name: could not load {what} '{name}' ({first})")


def load_tokenizer(cfg: ModelConfig, source: str | None = None):
    from transformers import AutoTokenizer

    name = source or cfg.name
    if source is None and Path(name).is_dir():
        check_local_folder(cfg, need_weights=False, need_tokenizer=True)
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


# Position ids start after the padding index in these (transformers' create_position_ids_from_input_ids):
# roberta-base has 514 positions and reads 512 tokens.
PADDING_OFFSET_TYPES = {"roberta", "xlm-roberta", "xlm-roberta-xl", "camembert", "roberta-prelayernorm", "data2vec-text",
                        "longformer", "ibert", "luke", "mpnet", "xmod", "markuplm", "layoutlmv3", "lilt"}
NO_LIMIT = 10**6  # a tokenizer's model_max_length above this is transformers' "unset" (int(1e30)), not a limit


def model_token_limit(mcfg, tokenizer=None) -> int | None:
    """The most tokens the model reads: its absolute position embeddings (less RoBERTa's padding offset)
    and the tokenizer's model_max_length when set. Longer inputs crash in the embeddings."""
    limits = []
    n = getattr(mcfg, "max_position_embeddings", None)
    if isinstance(n, int) and getattr(mcfg, "position_biased_input", True) is not False:  # DeBERTa: relative only
        if getattr(mcfg, "model_type", None) in PADDING_OFFSET_TYPES:
            n -= (getattr(mcfg, "pad_token_id", None) or 0) + 1
        limits.append(n)
    m = getattr(tokenizer, "model_max_length", None)
    if isinstance(m, int) and 0 < m < NO_LIMIT:
        limits.append(m)
    return min(limits) if limits else None


def check_max_length(cfg: ModelConfig, max_length: int, tokenizer) -> None:
    """data.max_length within model_token_limit, before any text is tokenised."""
    from transformers import AutoConfig

    try:
        mcfg = AutoConfig.from_pretrained(cfg.name, trust_remote_code=cfg.trust_remote_code)
    except Exception as e:
        raise _wrap("the config of", cfg.name, e) from None
    limit = model_token_limit(mcfg, tokenizer)
    if limit is not None and max_length > limit:
        raise LorafitError(f"data.max_length: {max_length} exceeds what {cfg.name} can read ({limit} tokens); "
                           f"set data.max_length <= {limit}")


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


def load_base(cfg: ModelConfig, label_names: list[str], *, weights: bool = True,
              state: dict[str, torch.Tensor] | None = None):
    """AutoModelForSequenceClassification with the label map. weights=False builds it on the meta
    device from config.json alone: exact shapes for parameter counting, no memory, no download.
    state: the checkpoint's tensors already in memory (read_checkpoint): the model is built over
    them, its parameters *are* those tensors (transformers assigns them, no copy) and nothing is read
    from disk; lorafit serve builds every run over one base this way (infer/pool.py)."""
    from transformers import AutoModelForSequenceClassification

    mcfg = load_model_config(cfg, len(label_names), label_names)
    mcfg._attn_implementation = cfg.attn_implementation
    if not weights:
        with torch.device("meta"):
            return AutoModelForSequenceClassification.from_config(mcfg, trust_remote_code=cfg.trust_remote_code)
    if state is None:
        check_local_folder(cfg, need_weights=True)
    try:
        with quiet_transformers():
            if state is not None:
                # the Auto class wants a name to read; the concrete class takes a state dict instead
                model, info = AutoModelForSequenceClassification._model_mapping[type(mcfg)].from_pretrained(
                    None, config=mcfg, state_dict=state, output_loading_info=True)
            else:
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    cfg.name, config=mcfg, trust_remote_code=cfg.trust_remote_code,
                    use_safetensors=None if cfg.allow_pickle_weights else True, output_loading_info=True)
    except Exception as e:
        raise _wrap("the model", cfg.name, e) from None
    # heads.py refuses to freeze a layer that is freshly initialised (e.g. a BERT checkpoint without pooler)
    setattr(model, NEW_WEIGHTS_ATTR, set(info.get("missing_keys", ())))
    return model


def checkpoint_files(cfg: ModelConfig) -> list[Path] | None:
    """The safetensors files of the base checkpoint (a local folder, or the hub cache's copy of a hub
    id), resolved; None when the weights are not plain local safetensors (pickled weights, a hub id not
    cached, remote code: those load only through transformers' own from_pretrained)."""
    import json

    if cfg.trust_remote_code:
        return None
    p = Path(cfg.name).expanduser()
    if not p.exists():
        from huggingface_hub import try_to_load_from_cache

        try:
            found = next((f for f in (try_to_load_from_cache(cfg.name, n) for n in SAFE_WEIGHTS) if isinstance(f, str)),
                         None)
        except Exception:  # not a valid repo id
            return None
        if found is None:
            return None
        p = Path(found).parent
    if (p / "model.safetensors").is_file():
        return [(p / "model.safetensors").resolve()]
    index = p / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [(p / s).resolve() for s in shards]
        return files if all(f.is_file() for f in files) else None
    return None


def read_checkpoint(files: list[Path], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Every tensor of the checkpoint in memory on `device` (one copy), for load_base(state=...)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f), device=str(device)))
    return state


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
