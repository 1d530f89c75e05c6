"""Frozen-prefix caching: when nothing below encoder layer k trains, the hidden states entering
layer k never change, so compute them once (eval mode) and train only layers k.. and the head.

The cache stands in for the embeddings (a module returning the fed states) and the frozen
layers become pass-throughs, so the model's own forward (attention-mask handling, pooler, head)
runs unchanged and parameter names stay the same (checkpoints and PEFT saves are unaffected).
What changes: dropout inside the frozen prefix is off during training (its states come from
eval mode). In eval mode the result equals the full model's to float tolerance (tested).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..model.adapters import layer_of
from ..model.heads import encoder_of
from ..progress import progress


def encoder_layers(model: nn.Module) -> nn.ModuleList | None:
    _, enc = encoder_of(model)
    layers = getattr(getattr(enc, "encoder", None), "layer", None)
    return layers if isinstance(layers, nn.ModuleList) else None


def trainable_floor(model: nn.Module) -> int:
    """Lowest encoder layer holding a trainable parameter; 0 if embeddings train; the number of
    layers when only the head (above the encoder) trains."""
    prefix, _ = encoder_of(model)
    layers = encoder_layers(model)
    floor = len(layers) if layers is not None else 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        clean = name.replace("base_model.model.", "")
        layer = layer_of(clean)
        if layer is not None:
            floor = min(floor, layer)
        elif ".embeddings." in clean or clean.startswith(f"{prefix}.embeddings"):
            return 0
    return floor


def why_off(model: nn.Module, where) -> str | None:
    """None when prefix caching applies, else the reason it is off (for the run log)."""
    cfg = where.cfg
    if cfg is None:
        return "no run config: the prefix cache is a training switch"
    if cfg.speed.cache_prefix is False:
        return "speed.cache_prefix: false"
    if encoder_layers(model) is None:
        return f"{type(model).__name__} has no encoder.layer list"
    if cfg.data.shuffle_sentences_p > 0:
        return "sentence-shuffle augmentation changes inputs every epoch"
    if trainable_floor(model) == 0:
        return "layer 0 or the embeddings have trainable parameters, so no frozen prefix exists"
    return None


class FedStates(nn.Module):
    """Stands in for the embeddings: returns the hidden states fed for the current batch."""

    def __init__(self):
        super().__init__()
        self.value: torch.Tensor | None = None

    def forward(self, *args, **kwargs) -> torch.Tensor:
        if self.value is None:
            raise RuntimeError("prefix cache: no hidden states fed for this batch")
        value, self.value = self.value, None  # one batch, one use: a stale tensor must never leak
        return value


class PassThrough(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class HiddenStore:
    """Per-item hidden states (length_i × hidden), flat in a memory-mapped file."""

    def __init__(self, lengths: list[int], hidden: int, dtype: str, folder: Path):
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)])
        self.np_dtype = np.float16 if dtype == "float16" else np.float32
        f = tempfile.NamedTemporaryFile(dir=folder, prefix="prefix-", suffix=".mmap", delete=False)
        self.path = Path(f.name)
        f.close()
        self.data = np.memmap(self.path, dtype=self.np_dtype, mode="w+", shape=(int(self.offsets[-1]), hidden))

    def put(self, i: int, states: torch.Tensor) -> None:
        self.data[self.offsets[i]:self.offsets[i + 1]] = states.float().cpu().numpy().astype(self.np_dtype, copy=False)

    def get(self, i: int) -> torch.Tensor:
        return torch.from_numpy(np.asarray(self.data[self.offsets[i]:self.offsets[i + 1]]))

    def close(self) -> None:
        del self.data
        self.path.unlink(missing_ok=True)


class PrefixCache:
    """Computes and feeds the states entering layer k; install()/restore() swap the modules."""

    def __init__(self, model: nn.Module, k: int, dtype: str = "float32", folder: str | Path | None = None):
        self.model, self.k, self.dtype = model, k, dtype
        self.folder = Path(folder or tempfile.gettempdir())
        _, self.encoder = encoder_of(model)
        self.layers = encoder_layers(model)
        self.fed = FedStates()
        self._saved: tuple | None = None
        self.stores: list[HiddenStore] = []

    @torch.inference_mode()
    def compute(self, ds, collate, batch_size: int, desc: str) -> HiddenStore:
        """Run embeddings + layers[:k] once over a dataset, in eval mode."""
        from ..data.batches import LengthGroupedBatches

        device = next(p for p in self.model.parameters()).device
        installed = self._saved is not None
        self.restore()  # the prefix's own modules compute the states (put back in place afterwards)
        store = HiddenStore(ds.lengths(), self.model.config.hidden_size, self.dtype, self.folder)
        was_training = self.model.training
        self.model.eval()
        # Run only the prefix: a truncated layer list for now (the model's own forward does the rest);
        # the original list object goes back afterwards, since install() edits that very object.
        self.encoder.encoder.layer = nn.ModuleList(list(self.layers)[: self.k])
        try:
            for idx in progress(LengthGroupedBatches(ds.lengths(), batch_size, shuffle=False), desc=desc, unit=" batches",
                                leave=False):
                batch = collate([ds[i] for i in idx])
                # token_type_ids: a text pair's segments (BERT) enter the embeddings, so the cached states
                inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
                out = self.encoder(**inputs).last_hidden_state
                for row, i in enumerate(idx):
                    store.put(i, out[row, : store.lengths[i]])
        finally:
            self.encoder.encoder.layer = self.layers
            self.model.train(was_training)
            if installed:
                self.install()
        self.stores.append(store)
        return store

    def install(self) -> None:
        """Embeddings → fed states, layers below k → pass-throughs (names of the rest unchanged)."""
        if self._saved is not None:
            return
        self._saved = (self.encoder.embeddings, [self.layers[i] for i in range(self.k)])
        self.encoder.embeddings = self.fed
        for i in range(self.k):
            self.layers[i] = PassThrough()

    def restore(self) -> None:
        if self._saved is None:
            return
        emb, frozen = self._saved
        self.encoder.embeddings = emb
        for i, layer in enumerate(frozen):
            self.layers[i] = layer
        self._saved = None

    def feed(self, states: torch.Tensor) -> None:
        # the cache stores float32 (or float16); layer k reads the dtype its frozen weights are kept in
        dtype = next((p.dtype for p in self.layers[self.k].parameters() if not p.requires_grad and p.is_floating_point()),
                     states.dtype)
        self.fed.value = states.to(dtype)

    def close(self) -> None:
        self.restore()
        for s in self.stores:
            s.close()
        self.stores = []


def install(model: nn.Module, where) -> str:
    """A PrefixCache for the model's frozen prefix, kept on the model (cache_of) and put in place:
    feed it each batch's states (its compute() fills the stores). Says what is cached, for the run log."""
    k = trainable_floor(model)
    cache = PrefixCache(model, k, where.cfg.speed.resolved("cache_dtype"))
    model.__dict__["_lorafit_prefix"] = cache  # not a submodule: saved weights and names stay the same
    cache.install()
    n = "the embeddings" if k == 0 else f"embeddings + layers 0-{k - 1}"
    return f"nothing below layer {k} trains: {n} computed once"


def cache_of(model: nn.Module) -> PrefixCache | None:
    """The PrefixCache install() put on the model, or None."""
    return model.__dict__.get("_lorafit_prefix")


def remove(model: nn.Module) -> None:
    """The model's own modules back, and the cached states' files deleted."""
    cache = model.__dict__.pop("_lorafit_prefix", None)
    if cache is not None:
        cache.close()


class CachedCollator:
    """Pads ids as usual and adds the cached states entering layer k, padded the same way."""

    def __init__(self, base_collate, store: HiddenStore):
        self.base, self.store = base_collate, store

    def __call__(self, items):
        batch = self.base([item[:-1] for item in items])  # (ids, label[, segment ids]) without the index
        width = batch["input_ids"].shape[1]
        hidden = torch.zeros((len(items), width, self.store.data.shape[1]), dtype=torch.float32)
        for row, item in enumerate(items):
            h = self.store.get(item[-1])
            hidden[row, : h.shape[0]] = h
        batch["prefix_hidden"] = hidden
        return batch


class IndexedDataset(torch.utils.data.Dataset):
    """Adds the item index, so the collator can fetch its cached states."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self):
        return len(self.ds)

    def lengths(self):
        return self.ds.lengths()

    def __getitem__(self, i):
        return (*self.ds[i], i)
