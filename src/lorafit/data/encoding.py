"""Texts to the token ids a model reads, the one tokenisation of lorafit: one text, or a pair
encoded by the tokenizer itself (its own separator and segment ids, truncated longest_first), and
which tokens of a long single text are kept (data.truncation: head, tail, head_tail). Every path
also counts the texts longer than max_length (`truncation_note` words it for the user).

The disk cache (LORAFIT_CACHE) serves training: token ids of every text, truncated and unpadded,
kept across runs (sweeps, seeds) keyed by the tokenizer's whole definition, max_length, the texts,
and the pair texts / the truncation. Inference (infer/engine.py) encodes with cache=False: the
files a user predicts on are read once, and would only fill the cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..progress import progress


@dataclass(frozen=True)
class Encoding:
    max_length: int
    truncation: str = "head"          # head | tail | head_tail
    head_tokens: Optional[int] = None  # head_tail: tokens kept from the start (None: a quarter of the room)

    @classmethod
    def of(cls, data_cfg) -> "Encoding":
        return cls(data_cfg.max_length, data_cfg.truncation, data_cfg.head_tokens)


def uses_segment_ids(tokenizer) -> bool:
    """BERT-style tokenizers give token_type_ids (0 for the first text, 1 for the second); RoBERTa's do not."""
    return "token_type_ids" in (getattr(tokenizer, "model_input_names", None) or ())


def encode(tokenizer, texts: Sequence[str], enc: Encoding, pairs: Optional[Sequence[str]] = None, *,
           desc: str = "tokenising", chunk: int = 2048, cache: bool = True
           ) -> tuple[list[list[int]], Optional[list[list[int]]], int]:
    """(token ids, segment ids or None, how many texts were longer than max_length) of every text (and
    its pair), unpadded, at most max_length. cache: read and fill the disk cache (training only)."""
    if pairs is None and enc.truncation == "head":
        ids, truncated = _head(tokenizer, texts, enc.max_length, desc=desc, chunk=chunk, cache=cache)
        return ids, None, truncated
    if pairs is not None and len(pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(pairs)} pair texts")
    with_types = pairs is not None and uses_segment_ids(tokenizer)
    extra = ["pair", *pairs] if pairs is not None else [f"truncation={enc.truncation}:{enc.head_tokens}"]
    folder = cache_root() / _fingerprint(tokenizer, texts, enc.max_length, extra) if cache else None
    if folder is not None and folder.is_dir():
        ids, truncated = _load_flat(folder, "ids.npy"), _load_truncated(folder)
        types = _load_flat(folder, "types.npy") if with_types else None
        if ids is not None and truncated is not None and (types is not None or not with_types):
            return ids, types, truncated
    ids: list[list[int]] = []
    types: Optional[list[list[int]]] = [] if with_types else None
    truncated = 0
    with progress(total=len(texts), desc=desc, unit=" items", leave=False, disable=len(texts) < chunk) as bar:
        for s in range(0, len(texts), chunk):
            part = list(texts[s:s + chunk])
            if pairs is not None:
                second = list(pairs[s:s + chunk])
                out = tokenizer(part, second, truncation="longest_first", max_length=enc.max_length,
                                add_special_tokens=True)
                ids.extend(out["input_ids"])
                if types is not None:
                    types.extend(out["token_type_ids"])
                truncated += _pairs_cut(tokenizer, part, second, out["input_ids"], enc.max_length)
            else:
                part_ids, cut_here = cut(tokenizer, part, enc)
                ids.extend(part_ids)
                truncated += cut_here
            bar.update(len(part))
    if folder is not None:
        _store_cached(folder, ids, types, truncated)
    return ids, types, truncated


def _pairs_cut(tokenizer, texts: list[str], pairs: list[str], ids: list[list[int]], max_length: int) -> int:
    """How many pairs were longer than max_length together: only those that fill it can have been, and
    only they are encoded again, whole."""
    full = [i for i, x in enumerate(ids) if len(x) >= max_length]
    if not full:
        return 0
    whole = tokenizer([texts[i] for i in full], [pairs[i] for i in full], truncation=False, add_special_tokens=True,
                      return_attention_mask=False, verbose=False)["input_ids"]
    return sum(len(x) > max_length for x in whole)


def cut(tokenizer, texts: Sequence[str], enc: Encoding) -> tuple[list[list[int]], int]:
    """Single texts encoded whole, then cut to max_length keeping the special tokens where the tokenizer
    put them and, of the text's own tokens, the first (head), the last (tail) or both ends (head_tail);
    with how many were cut."""
    out = tokenizer(list(texts), truncation=False, add_special_tokens=True, return_special_tokens_mask=True, verbose=False)
    result, truncated = [], 0
    for ids, special in zip(out["input_ids"], out["special_tokens_mask"]):
        if len(ids) <= enc.max_length:
            result.append(list(ids))
            continue
        truncated += 1
        content = [i for i, m in enumerate(special) if not m]
        room = max(0, enc.max_length - (len(ids) - len(content)))
        keep = set(i for i, m in enumerate(special) if m)
        keep.update(kept_positions(content, room, enc))
        result.append([ids[i] for i in sorted(keep)])
    return result, truncated


def kept_positions(content: list[int], room: int, enc: Encoding) -> list[int]:
    if enc.truncation == "head":
        return content[:room]
    if enc.truncation == "tail":
        return content[len(content) - room:] if room else []
    k = min(room, room // 4 if enc.head_tokens is None else enc.head_tokens)
    tail = room - k
    return content[:k] + (content[len(content) - tail:] if tail else [])


def encode_one(tokenizer, text: str, enc: Encoding, pair: Optional[str] = None) -> tuple[list[int], Optional[list[int]]]:
    """One item, uncached (the sentence-shuffle augmentation re-encodes items every epoch)."""
    ids, types, _ = encode(tokenizer, [text], enc, None if pair is None else [pair], cache=False)
    return ids[0], None if types is None else types[0]


def truncation_note(truncated: int, n: int, enc: Encoding, pairs: bool = False, split: str = "") -> Optional[str]:
    """How many texts were cut, for the user (None when none was): the model never read the rest of them."""
    if not truncated:
        return None
    what = ("text pairs" if pairs else "texts") if not split else f"{split} {'text pairs' if pairs else 'texts'}"
    how = "pairs: longest_first" if pairs else f"data.truncation: {enc.truncation}"
    return (f"{truncated:,} of {n:,} {what} were longer than max_length {enc.max_length:,} tokens and were "
            f"truncated ({how})")


# The disk cache (training) and the plain head path


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


def _load_flat(folder: Path, name: str) -> Optional[list[list[int]]]:
    """A cached flat array (ids.npy, or types.npy: the segment ids of text pairs) cut at offsets.npy, or None."""
    try:
        flat = np.load(folder / name, mmap_mode="r", allow_pickle=False)
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


def _head(tokenizer, texts: Sequence[str], max_length: int, desc: str = "tokenising", chunk: int = 2048,
             cache: bool = True) -> tuple[list[list[int]], int]:
    """(token ids of every text, truncated to max_length as the tokenizer truncates and unpadded, how many
    texts were longer): `encode`'s path for single texts with head truncation."""
    folder = cache_root() / _fingerprint(tokenizer, texts, max_length) if cache else None
    if folder is not None and folder.is_dir():
        hit, truncated = _load_flat(folder, "ids.npy"), _load_truncated(folder)
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
