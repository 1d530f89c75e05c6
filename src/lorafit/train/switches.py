"""Which speed switches a training run installs, and the run-log line that says why each is on or off.

The switches themselves live in lorafit.speed (each with its why-off / install / remove contract and
an equivalence test); this module is the training policy: on CPU or GPU, with this config."""
from __future__ import annotations

from typing import Callable

import torch


def install(recipe) -> None:
    """Every switch that applies to this run, each saying in the log why it is on or off."""
    recipe.fast_dropout = fast_dropout(recipe)
    recipe.trim_heap = heap_trimming(recipe)
    huge_pages(recipe)
    recipe.prefix = prefix_cache(recipe)
    first_token_layer(recipe)  # after the prefix cache: it computes its states with the full last layer


def huge_pages(recipe) -> None:
    """Only said: the lorafit command asks for them before torch loads (speed/memory.py)."""
    if recipe.acc.device.type == "cpu":
        from ..speed.memory import huge_pages_active

        recipe.log("huge pages: on" if huge_pages_active() else "huge pages: off (THP_MEM_ALLOC_ENABLE=1 was not in "
                   "the environment when torch loaded, or the kernel has THP off)")


def fast_dropout(recipe) -> bool:
    """Cheaper dropout masks (speed/dropout.py) when asked for, or on CPU with auto; says so in the log."""
    from ..speed.dropout import install, why_off

    choice = recipe.cfg.train.fast_dropout
    why = "train.fast_dropout: false" if choice is False else why_off(recipe.acc.device.type) if choice == "auto" else None
    if why is not None:
        recipe.log(f"fast dropout: off ({why})")
        return False
    recipe.log(f"fast dropout: on ({install(recipe.model)}: masks from 16-bit uniforms, same distribution)")
    return True


def heap_trimming(recipe) -> Callable[[], object]:
    """malloc_trim after every optimizer step (true), or after steps that grew RSS past a limit
    (a fraction; auto = memory.GROWTH_SLACK on CPU); a no-op when off, so the loops call it always."""
    from ..speed.memory import GROWTH_SLACK, heap_trimmer, trim_when_grown, why_off

    choice, device = recipe.cfg.train.trim_heap, recipe.acc.device.type
    why = None
    if choice is False:
        why = "train.trim_heap: false"
    elif choice == "auto" and device != "cpu":
        why = f"training on {device}"
    else:
        why = why_off()
    if why:
        recipe.log(f"heap trimming: off ({why})")
        return lambda: None
    if choice is True:
        recipe.log("heap trimming: on (freed memory goes back to the OS after each step: lowest peak RSS)")
        return heap_trimmer()
    slack = GROWTH_SLACK if choice == "auto" else choice
    recipe.log(f"heap trimming: when grown (freed memory goes back to the OS after a step that leaves RSS more than "
               f"{slack:.0%} above the first step's)")
    return trim_when_grown(heap_trimmer(), slack)


def prefix_cache(recipe):
    """Frozen-prefix caching when it applies (speed/prefix.py); says in the log why it is on or off."""
    from ..data.batches import Collator
    from ..speed.prefix import CachedCollator, IndexedDataset, PrefixCache, trainable_floor, why_off

    reason = why_off(recipe.model, recipe.cfg)
    if reason is not None:
        recipe.log(f"prefix cache: off ({reason})")
        return None
    k = trainable_floor(recipe.model)
    cache = PrefixCache(recipe.model.to(recipe.acc.device), k, recipe.cfg.train.cache_dtype)
    collate = Collator(recipe.tokenizer.pad_token_id)
    bs = recipe.cfg.train.eval_batch_size
    loaders = []
    for ds, loader in ((recipe.train_ds, recipe.train_loader), (recipe.val_ds, recipe.val_loader)):
        store = cache.compute(ds, collate, bs, f"caching layers 0-{k - 1}")
        loaders.append(torch.utils.data.DataLoader(IndexedDataset(ds), batch_sampler=loader.batch_sampler,
                                                   collate_fn=CachedCollator(collate, store),
                                                   generator=loader.generator))
    recipe.train_loader, recipe.val_loader = loaders
    cache.install()
    n = "the embeddings" if k == 0 else f"embeddings + layers 0-{k - 1}"
    recipe.log(f"prefix cache: on (nothing below layer {k} trains: {n} computed once for "
               f"{len(recipe.train_ds) + len(recipe.val_ds)} items, {recipe.cfg.train.cache_dtype}; training runs layers {k}+)")
    return cache


def first_token_layer(recipe) -> None:
    """The last layer on the first token only, where the head reads nothing else (speed/first_token.py)."""
    from ..speed import first_token

    reason = (first_token.apply(recipe.model, recipe.cfg.head.type) if recipe.cfg.train.last_layer_first_token
              else "train.last_layer_first_token: false")
    recipe.log("last layer on the first token only: " + ("on (the head reads nothing else)" if reason is None else f"off ({reason})"))
