"""Which speed switches a training run installs, and the run-log line that says why each is on or off.

The switches themselves live in lorafit.speed (each with the one why_off / install / remove contract
and an equivalence test); this module is the training policy: on CPU or GPU, with this config."""
from __future__ import annotations

from typing import Callable

import torch


def where(recipe):
    """What the switches may look at besides the model: the device and the run's config."""
    from ..speed import Where

    return Where(recipe.acc.device, recipe.cfg)


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
    from ..speed import dropout

    choice, here = recipe.cfg.speed.fast_dropout, where(recipe)
    why = "speed.fast_dropout: false" if choice is False else dropout.why_off(recipe.model, here) if choice == "auto" else None
    if why is not None:
        recipe.log(f"fast dropout: off ({why})")
        return False
    recipe.log(f"fast dropout: on ({dropout.install(recipe.model, here)}: masks from 16-bit uniforms, same distribution)")
    return True


def heap_trimming(recipe) -> Callable[[], object]:
    """malloc_trim after every optimizer step (true), or after steps that grew RSS past a limit
    (a fraction; auto = memory.GROWTH_SLACK on CPU); a no-op when off, so the loops call it always."""
    from ..speed import memory

    choice, device, here = recipe.cfg.speed.trim_heap, recipe.acc.device.type, where(recipe)
    why = None
    if choice is False:
        why = "speed.trim_heap: false"
    elif choice == "auto" and device != "cpu":
        why = f"training on {device}"
    else:
        why = memory.why_off(recipe.model, here)
    if why:
        recipe.log(f"heap trimming: off ({why})")
        return lambda: None
    what = memory.install(recipe.model, here)
    recipe.log(f"heap trimming: {'on' if choice is True else 'when grown'} ({what})")
    return memory.after_step(recipe.model)


def prefix_cache(recipe):
    """Frozen-prefix caching when it applies (speed/prefix.py); says in the log why it is on or off."""
    from ..data.batches import Collator
    from ..speed import prefix

    here = where(recipe)
    reason = prefix.why_off(recipe.model, here)
    if reason is not None:
        recipe.log(f"prefix cache: off ({reason})")
        return None
    what = prefix.install(recipe.model.to(recipe.acc.device), here)
    cache = prefix.cache_of(recipe.model)
    collate = Collator(recipe.tokenizer.pad_token_id)
    bs = recipe.cfg.train.eval_batch_size
    loaders = []
    for ds, loader in ((recipe.train_ds, recipe.train_loader), (recipe.val_ds, recipe.val_loader)):
        store = cache.compute(ds, collate, bs, f"caching layers 0-{cache.k - 1}")
        loaders.append(torch.utils.data.DataLoader(prefix.IndexedDataset(ds), batch_sampler=loader.batch_sampler,
                                                   collate_fn=prefix.CachedCollator(collate, store),
                                                   generator=loader.generator))
    recipe.train_loader, recipe.val_loader = loaders
    recipe.log(f"prefix cache: on ({what} for {len(recipe.train_ds) + len(recipe.val_ds)} items, "
               f"{recipe.cfg.speed.resolved('cache_dtype')}; training runs layers {cache.k}+)")
    return cache


def first_token_layer(recipe) -> None:
    """The last layer on the first token only, where the head reads nothing else (speed/first_token.py)."""
    from ..speed import apply, first_token

    reason = (apply(first_token, recipe.model, where(recipe)) if recipe.cfg.speed.resolved("last_layer_first_token")
              else "speed.last_layer_first_token: false")
    recipe.log("last layer on the first token only: " + ("on (the head reads nothing else)" if reason is None else f"off ({reason})"))
