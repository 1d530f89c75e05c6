"""Tokenise once: token ids of every text, truncated and unpadded, cached on disk across runs
(sweeps, seeds) by the tokenizer's whole definition, max_length and the texts (LORAFIT_CACHE), with
how many texts were longer than max_length (predict, evaluate and the run log say so)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..progress import progress


# 2: truncated.npy (how many texts were cut) beside the ids; a folder of the format before has none
FORMAT = 2


def cache_root() -> Path:
    return Path(os.environ.get("LORAFIT_CACHE", Path.home() / ".cache" / "lorafit")) / "tokens"


def _fingerprint(tokenizer, texts: Sequence[str], max_length: int, extra: Sequence[str] = ()) -> str:
    """extra: more strings that define the encoding (data/encoding.py: the pair texts, the truncation)."""
    h = hashlib.sha256(f"format {FORMAT}|".encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        for runtime in ("truncation", "padding"):  # set by each call, not part of what the tokenizer is
            spec.pop(runtime, None)
        h.update(json.dumps(spec, sort_keys=True).encode())
    else:
        h.update(f"{type(tokenizer).__name__}:{tokenizer.name_or_path}".encode())
    h.update(f"|{max_length}|{len(texts)}|".encode())
    for t in texts:
        h.update(t.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    if extra:
        h.update(b"|extra|")
        for t in extra:
            h.update(t.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
    return h.hexdigest()[:32]


def _load_cached(folder: Path) -> Optional[list[list[int]]]:
    try:
        flat = np.load(folder / "ids.npy", mmap_mode="r", allow_pickle=False)
        offsets = np.load(folder / "offsets.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def _load_types(folder: Path) -> Optional[list[list[int]]]:
    """Segment ids stored beside the ids (text pairs), or None."""
    try:
        flat = np.load(folder / "types.npy", mmap_mode="r", allow_pickle=False)
        offsets = np.load(folder / "offsets.npy", allow_pickle=False)
    except (OSError, ValueError):
        return None
    return [flat[offsets[i]:offsets[i + 1]].tolist() for i in range(len(offsets) - 1)]


def _load_truncated(folder: Path) -> Optional[int]:
    """How many of the cached texts were longer than max_length, or None."""
    try:
        return int(np.load(folder / "truncated.npy", allow_pickle=False))
    except (OSError, ValueError, TypeError):
        return None


def _store_cached(folder: Path, ids: list[list[int]], types: Optional[list[list[int]]] = None,
                  truncated: int = 0) -> None:
    """Flat int32 ids + offsets (plain .npy, no pickle), written to a temp folder then renamed.
    types: segment ids of the same shape (text pairs), stored as types.npy; truncated: the count of
    texts cut to max_length."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        np.save(tmp / "ids.npy", np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(lengths.sum())))
        if types is not None:
            np.save(tmp / "types.npy", np.fromiter((t for x in types for t in x), dtype=np.int8, count=int(lengths.sum())))
        np.save(tmp / "offsets.npy", np.concatenate([[0], np.cumsum(lengths)]))
        np.save(tmp / "truncated.npy", np.int64(truncated))
        os.replace(tmp, folder)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)  # a concurrent writer won, or the disk is read-only: no cache, no harm


def tokenize(tokenizer, texts: Sequence[str], max_length: int, desc: str = "tokenising", chunk: int = 2048,
             cache: bool = True) -> tuple[list[list[int]], int]:
    """(token ids of every text, truncated to max_length as the tokenizer truncates and unpadded, how many
    texts were longer). Cached on disk across runs (sweeps, seeds), keyed by the tokenizer's full definition,
    max_length and the texts; LORAFIT_CACHE moves it."""
    folder = cache_root() / _fingerprint(tokenizer, texts, max_length) if cache else None
    if folder is not None and folder.is_dir():
        hit, truncated = _load_cached(folder), _load_truncated(folder)
        if hit is not None and truncated is not None:
            return hit, truncated
    out: list[list[int]] = []
    truncated = 0
    with progress(total=len(texts), desc=desc, unit=" items", leave=False, disable=len(texts) < chunk) as bar:
        for s in range(0, len(texts), chunk):
            part = list(texts[s:s + chunk])
            # one token more than max_length: a text that fills it was longer, and is cut by one token, so the
            # count costs no second tokenisation (the ids equal truncation at max_length itself)
            enc = tokenizer(part, truncation=True, max_length=max_length + 1, add_special_tokens=True,
                            return_special_tokens_mask=True, return_attention_mask=False, verbose=False)
            for ids, special in zip(enc["input_ids"], enc["special_tokens_mask"]):
                if len(ids) > max_length:
                    truncated += 1
                    ids = _drop_one(ids, special, getattr(tokenizer, "truncation_side", "right"))[:max_length]
                out.append(ids)
            bar.update(len(part))
    if folder is not None:
        _store_cached(folder, out, truncated=truncated)
    return out, truncated


def _drop_one(ids: list[int], special: list[int], side: str) -> list[int]:
    """ids without the text token that truncation at one token fewer leaves out: the last one (the first
    when the tokenizer truncates on the left); the special tokens stay where the tokenizer put them."""
    content = [i for i, m in enumerate(special) if not m]
    if not content:
        return ids
    drop = content[0] if side == "left" else content[-1]
    return ids[:drop] + ids[drop + 1:]
