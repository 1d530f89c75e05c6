"""Runs over one base model, loaded over one copy of its weights (BasePool): what `lorafit serve` holds
for its runs, usable by any caller loading several runs (a single run loads exactly as predict loads it).

How the base is shared. The base checkpoint's safetensors files are read into memory once
(model.load.read_checkpoint), and every run over that base is built over those tensors
(`load_trained(base_state=...)`: transformers assigns them to the new model's parameters, no copy),
then PEFT adds the run's own adapter and head from its adapter/ folder. No run materialises a
second copy of the base, not even for a moment (loading each run whole and then swapping its tensors
for the shared ones left ~200 MB of freed heap in the process per roberta-base run: glibc keeps it).
What is shared must be bit for bit what that run would have read itself, so the pool of checkpoints
is keyed by the identity of the base's weight files: resolved path, device, inode, size and
modification time (ns) of each safetensors file. Why not a hash of the contents: it would read
every base again (~500 MB for roberta-base) to learn what the path and stat already say during a
start-up of seconds; and not the safetensors header: it holds names, dtypes, shapes and offsets,
not values, so two different fine-tunes of one architecture have the same header. A base in another
folder (even a byte-equal copy) or rewritten between two runs' loads gets its own copy: never a
wrong share, at worst a missed one. Bases that are not plain local safetensors (pickled weights,
remote code, a hub id not in the cache) load as predict loads them, and then every frozen tensor
equal (torch.equal, bit for bit) to one already held for that base is swapped for the held one.
Either way LoRA A/B, heads, trained LayerNorms and anything that differs stay per run (SharedBase
counts them). Full fine-tuning runs train every tensor: they are their own model and share nothing.
Packed inference (speed/packed.py) packs each shared weight once (a packed copy per run would undo
the sharing).

Mixed batches: with `mixed` (the default), an adapter run that infer/mixed.py represents exactly
(plain LoRA over a BERT or RoBERTa base in plain safetensors: its docstring lists what falls back) is
not built as its own PEFT model but added as slots to one MixedBase per shared base, so rows of
several runs are computed in one forward (engine.forward_rows); the rest load as below.

The one difference from predict, for runs that share a base: LoRA is not merged into it (a merge
would change the shared weights for every run), so each LoRA layer adds its low-rank product at run
time; logits agree with predict's merged model to float rounding (tests/test_serve.py checks 1e-4).
A run alone over its base (and a full fine-tuning run) is loaded exactly as predict loads it, merged.

Runs loaded on demand (`lorafit serve --adapters-dir`) are not known when the pool starts, so the
caller says `share=True`: every one of them is built unmerged over the shared base, whatever else is
loaded. `release` is the other half: an unloaded run's tensors leave the pool's index (else the held
lists would keep every run ever loaded alive and grow the equality scan), and its memory goes back
to the OS."""
from __future__ import annotations

import gc
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, NamedTuple, Optional

if TYPE_CHECKING:
    import torch

    from .loaded import LoadedRun

OWN = (".lora_", "modules_to_save.", "lora_magnitude_vector")  # tensors that belong to one run


class PooledRun(NamedTuple):
    loaded: LoadedRun
    own_parameters: int     # parameters this run holds alone (adapter, head, trained norms)
    shared_parameters: int  # parameters it reads from the shared base copy


def base_key(cfg) -> str:
    """Runs with one key share one base copy: a local folder by its resolved path, else the hub id."""
    path = Path(cfg.model.name).expanduser()
    return str(path.resolve()) if path.exists() else cfg.model.name


def _plain_name(name: str) -> str:
    """A parameter's name in the base model: PEFT's wrappers' prefixes taken out."""
    return name.replace("base_model.model.", "").replace(".base_layer.", ".").replace(".original_module.", ".")


def owned(name: str) -> bool:
    """A parameter (by its name in the PEFT model) that belongs to one run: adapter, head, trained norms."""
    return any(k in name for k in OWN)


class SharedBase:
    """Frozen tensors held once, keyed by (base model, plain name); a run's tensor is swapped for the
    held one only when it is equal to it bit for bit."""

    def __init__(self):
        self.tensors: dict[tuple, list[torch.nn.Parameter]] = {}

    def share(self, model: torch.nn.Module, base: str) -> tuple[int, int]:
        """Swap `model`'s frozen base tensors for held equal ones; returns (own, shared) parameter counts."""
        import torch

        own = shared = 0
        for mod_name, module in list(model.named_modules()):
            for leaf, p in list(module._parameters.items()):
                if p is None:
                    continue
                full = f"{mod_name}.{leaf}" if mod_name else leaf
                if owned(full):
                    own += p.numel()
                    continue
                key = (base, _plain_name(full), tuple(p.shape), p.dtype, p.device)
                held = self.tensors.setdefault(key, [])
                twin = next((q for q in held if q is p or _same_view(q, p) or torch.equal(q, p)), None)
                if twin is None:
                    held.append(p)
                    shared += p.numel()  # the first run's tensor becomes the held one
                    continue
                if twin is not p:
                    module._parameters[leaf] = twin
                shared += p.numel()
        return own, shared

    def release(self, model: torch.nn.Module) -> None:
        """Forget `model`'s tensors that other runs did not take from it: each held list keeps its first
        tensor (the base copy every later run over that base is compared to or built over)."""
        mine = {id(p) for p in model.parameters()}
        for held in self.tensors.values():
            if len(held) > 1:
                held[1:] = [q for q in held[1:] if id(q) not in mine]


def _same_view(a, b) -> bool:
    """Two parameters over the same memory (runs built over one read checkpoint): equal without reading it."""
    return a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a.storage_offset() == b.storage_offset()


def _identity(f: Path) -> tuple:
    st = f.stat()
    return str(f), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def base_state(cfg, device, states: dict) -> dict | None:
    """The base checkpoint's tensors, read once per identity of its files (see the module docstring);
    None when the base is not plain safetensors (then it loads from disk and equal tensors are shared)."""
    from ..model.load import checkpoint_files, read_checkpoint

    files = checkpoint_files(cfg.model)
    if files is None:
        return None
    key = (tuple(_identity(f) for f in files), str(device))
    if key not in states:
        states[key] = read_checkpoint(files, device)
    return states[key]


def _free_memory() -> None:
    """Hand the freed per-run copies back to the OS (glibc keeps freed heap pages otherwise)."""
    from ..speed.memory import heap_trimmer

    gc.collect()
    trim = heap_trimmer()
    if trim is not None:
        trim()


def _pack_shared(model: torch.nn.Module, device: torch.device, packed: dict) -> None:
    """speed/packed.py's prepacked Linear weights, one packed copy per shared weight (a copy per run
    would undo the sharing)."""
    from ..speed import Where, apply, packed as packing

    apply(packing, model, Where(device, shared=packed))


class BasePool:
    """Loads runs on one device, each adapter run whose base another expected run shares over one copy
    of that base (see the module docstring). expected: the configs of every run this pool will load
    (a run whose base no other expected run has is loaded as predict loads it: merged)."""

    def __init__(self, device: Optional[torch.device] = None, expected: Iterable = (), mixed: bool = True):
        from .loaded import default_device

        self.device = device or default_device()
        self.per_base = Counter(base_key(c) for c in expected if c.adapter.method != "full")
        self.shared, self.packed, self.states = SharedBase(), {}, {}
        self.mixed = mixed
        self.mixed_bases: dict[tuple, object] = {}  # (id of the base's tensors, attention) -> infer.mixed.MixedBase

    def load(self, run_dir: str | Path, cfg=None, *, packed: Optional[bool] = None,
             share: Optional[bool] = None) -> PooledRun:
        """The run at run_dir (cfg: its config when already read); packed: speed/packed.py, None following
        the run's speed.packed_inference; share: True builds an adapter run over the shared base whatever
        was expected (runs loaded on demand), None decides by `expected` (a lone run merged)."""
        from ..runs.compat import read_run_folder
        from .loaded import load_run

        cfg = cfg if cfg is not None else read_run_folder(run_dir).cfg
        pack = cfg.speed.resolved("packed_inference") if packed is None else packed
        alone = self.per_base[base_key(cfg)] <= 1 if share is None else not share
        if cfg.adapter.method == "full" or alone:
            # nothing to share its base with: predict's own path (LoRA merged, packed as predict packs)
            loaded = load_run(run_dir, self.device, merge=True, packed=pack)
            model = loaded.model.requires_grad_(False)
            return PooledRun(loaded, sum(p.numel() for p in model.parameters()), 0)
        # unmerged (the base stays shared), unpacked (packing is done once per shared weight below)
        state = base_state(cfg, self.device, self.states)
        if self.mixed and state is not None:
            from . import mixed

            if mixed.why_not(cfg) is None:
                try:
                    base = self._mixed_base(cfg, state, pack)
                    loaded = mixed.load_run(base, run_dir)
                    return PooledRun(loaded, base.own_parameters(loaded.mixed[1]), base.shared_parameters())
                except mixed.NotMixable:
                    pass  # loaded the per-run way below
        loaded = load_run(run_dir, self.device, merge=False, base_state=state, packed=False)
        model = loaded.model.requires_grad_(False)
        own, shared = self.shared.share(model, base_key(loaded.cfg))
        if state is None:
            _free_memory()  # the run's own copy of the base, just swapped out
        if pack:
            _pack_shared(model, self.device, self.packed)
        return PooledRun(loaded, own, shared)

    def _mixed_base(self, cfg, state: dict, pack: bool):
        """The MixedBase over these base tensors (built on the first run that joins it)."""
        from ..model.load import load_base
        from .mixed import MixedBase

        key = (id(state), cfg.model.attn_implementation)
        if key not in self.mixed_bases:
            model = load_base(cfg.model, ["0", "1"], state=state).to(self.device).eval()
            if pack:
                _pack_shared(model, self.device, self.packed)
            self.mixed_bases[key] = MixedBase(model, self.device, key)
        return self.mixed_bases[key]

    def unload(self, loaded: LoadedRun) -> None:
        """Forget what an unloaded run holds alone: its slots of a mixed base; or its model's tensors in the
        shared index (the base's first, held copy stays for the next run over it) and the packed copies of
        weights no other run holds (its head's Linear layers: packed.install keeps each weight beside its
        copy). Once the caller drops its own references, `free()` hands the memory back."""
        if loaded.mixed is not None:
            base, slot = loaded.mixed
            base.remove(slot)
            return
        if loaded.model is None:
            return
        self.shared.release(loaded.model)
        held = {id(q) for tensors in self.shared.tensors.values() for q in tensors}
        mine = {id(p) for p in loaded.model.parameters()} - held
        for key in [k for k, (weight, _) in self.packed.items() if id(weight) in mine]:
            del self.packed[key]

    @staticmethod
    def free() -> None:
        _free_memory()
