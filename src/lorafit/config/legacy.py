"""Keys that moved: read where older configs (and older runs' config.yaml) have them, each with one line
naming the new key. The table is the whole policy: a key moves here, nowhere else."""
from __future__ import annotations

from typing import Callable, Optional

SPEED_KEYS = ("group_by_length", "cache_prefix", "cache_dtype", "fast_dropout", "trim_heap", "last_layer_first_token",
              "packed_inference", "compile")
ADALORA_KEYS = ("init_r", "target_r", "tinit", "tfinal", "delta_t")
MOVED = {**{f"train.{k}": f"speed.{k}" for k in SPEED_KEYS},
         **{f"adapter.{k}": f"adapter.adalora.{k}" for k in ADALORA_KEYS}}


def new_key(key: str) -> str:
    """Where a dotted key lives now (itself when it has not moved)."""
    return MOVED.get(key, key)


def move_keys(raw: dict, warn: Optional[Callable[[str], None]] = None) -> dict:
    """raw with every moved key at its new place; `warn` gets one line per key moved. A key given at
    both places is kept at the new one only if the two agree, else refused (which one was meant?)."""
    from ..errors import LorafitError

    for old, new in MOVED.items():
        section, key = old.split(".")
        node = raw.get(section)
        if not isinstance(node, dict) or key not in node:
            continue
        node = dict(node)
        value = node.pop(key)
        raw = {**raw, section: node}
        *path, last = new.split(".")
        target = raw
        for part in path:  # copy each level: the caller's dicts stay as they were
            child = target.get(part)
            child = dict(child) if isinstance(child, dict) else {}
            target[part] = child
            target = child
        if last in target and target[last] != value:
            raise LorafitError(f"{old} ({value!r}) and {new} ({target[last]!r}) are both set; keep {new} only")
        target[last] = value
        if warn is not None:
            warn(f"config: {old} is deprecated; write {new} (read as {new} this time)")
    return raw
