"""The served runs: each built as `lorafit predict` builds it, over one copy of its base's weights
per base, so N adapters over one base hold the base once.

Why not PEFT's multi-adapter model (one PeftModel, `load_adapter` per run, `set_adapter` or
`adapter_names=` per batch): every lorafit run has its own head, and runs over one base may differ
in head type (`cls_linear` replaces the classifier module, `model` keeps it), in label count (head
shapes), in trained LayerNorms (modules_to_save) and in attention settings. One PeftModel holds one
module tree, so those would have to be swapped per batch. Here each run keeps its own module tree,
built by `load_trained` exactly as for `lorafit predict` (same head surgery, same first-token speed
path), and only the frozen base tensors are shared.

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

The one difference from predict, for runs that share a base: LoRA is not merged into it (a merge
would change the shared weights for every run), so each LoRA layer adds its low-rank product at run
time; logits agree with predict's merged model to float rounding (tests/test_serve.py checks 1e-4).
A run alone over its base (and a full fine-tuning run) is loaded exactly as predict loads it, merged."""
from __future__ import annotations

import gc
import json
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import LorafitError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a URL path segment without quoting
if TYPE_CHECKING:
    import torch

    from ..infer.loaded import LoadedRun

OWN = (".lora_", "modules_to_save.", "lora_magnitude_vector")  # tensors that belong to one run


@dataclass
class ServedRun:
    """A served run: infer.loaded.LoadedRun (what the engine computes with: tokenizer, encoding, backend)
    under a name, with what /v1/models reports."""
    name: str
    run_dir: Path
    loaded: LoadedRun
    own_parameters: int = 0      # parameters this run holds alone (adapter, head, trained norms)
    shared_parameters: int = 0   # parameters it reads from the shared base copy
    trainable: int = 0           # eval.json's count of trained parameters

    # the engine reads these of any run it computes (infer/engine.py)
    model = property(lambda self: self.loaded.model)
    tokenizer = property(lambda self: self.loaded.tokenizer)
    encoding = property(lambda self: self.loaded.encoding)
    backend = property(lambda self: self.loaded.backend)
    cfg = property(lambda self: self.loaded.cfg)
    labels = property(lambda self: self.loaded.labels)
    device = property(lambda self: self.loaded.device)
    max_length = property(lambda self: self.loaded.max_length)

    @property
    def temperature(self) -> float:
        """calibration.json's, as `lorafit predict --probs` applies it (1 when the run has none)."""
        return self.loaded.temperature or 1.0

    def describe(self) -> dict:
        return {"name": self.name, "labels": self.labels, "base": self.cfg.model.name,
                "method": self.cfg.adapter.method, "head": self.cfg.head.type,
                "trainable_parameters": self.trainable, "own_parameters": self.own_parameters,
                "shared_parameters": self.shared_parameters,
                "max_length": self.max_length}


def parse_specs(specs: list[str]) -> list[tuple[str, Path]]:
    """RUN_DIR or NAME=RUN_DIR -> (name, folder); the name defaults to the folder's name."""
    out: list[tuple[str, Path]] = []
    seen: dict[str, str] = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not NAME.match(name):
            if sep and not Path(spec).exists():
                raise LorafitError(f"{spec}: '{name}' is not a valid model name (letters, digits, . _ -, at most 64, "
                                   "starting with a letter or digit)")
            name, path = Path(spec).resolve().name, spec
        folder = Path(path)
        if not folder.is_dir():
            raise LorafitError(f"{path}: no such run directory; give a folder written by lorafit train")
        if not NAME.match(name):
            raise LorafitError(f"{path}: folder name '{name}' is not a valid model name; serve it as NAME={path}")
        if name in seen:
            raise LorafitError(f"two runs are named '{name}' ({seen[name]} and {path}); name one with NAME={path}")
        seen[name] = path
        out.append((name, folder))
    if not out:
        raise LorafitError("serve: give at least one RUN_DIR")
    return out


def check_run(folder: Path):
    """A finished run's config, checked without loading weights (what predict checks, before anything is bound)."""
    from ..runs.directory import read_run
    from ..runs.weights import weights_folder
    from ..tasks import task_of

    cfg, _ = read_run(folder)
    weights = folder / weights_folder(cfg)
    if not weights.is_dir():
        raise LorafitError(f"{folder}: no trained weights ({weights.name}/ missing); did training finish?")
    # the API answers one label per text; other runs would get argmax answers that mean nothing
    if not task_of(cfg).served:
        raise LorafitError(f"{folder}: a {cfg.data.task} run; lorafit serve answers single_label runs only so far "
                           f"(use lorafit predict {folder} for it)")
    if cfg.data.text_pair_column:
        raise LorafitError(f"{folder}: trained on text pairs (data.text_pair_column); lorafit serve takes single "
                           f"texts only so far (use lorafit predict {folder} for it)")
    return cfg


def _trainable(folder: Path) -> int:
    try:
        return int(json.loads((Path(folder) / "eval.json").read_text(encoding="utf-8"))["trainable"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0  # an old run without the count: the API says 0 rather than failing to start


def _base_key(cfg) -> str:
    """Runs with one key share one base copy: a local folder by its resolved path, else the hub id."""
    path = Path(cfg.model.name).expanduser()
    return str(path.resolve()) if path.exists() else cfg.model.name


def _plain_name(name: str) -> str:
    """A parameter's name in the base model: PEFT's wrappers' prefixes taken out."""
    return name.replace("base_model.model.", "").replace(".base_layer.", ".").replace(".original_module.", ".")


def _owned(name: str) -> bool:
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
                if _owned(full):
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


class Registry:
    """name -> ServedRun, loaded once at start-up; read-only afterwards (safe to read from any thread)."""

    def __init__(self, runs: dict[str, ServedRun]):
        self.runs = runs

    def names(self) -> list[str]:
        return list(self.runs)

    @classmethod
    def load(cls, specs: list[tuple[str, Path]], device: torch.device | None = None, log=lambda line: None,
             packed: bool | None = None) -> "Registry":
        from ..infer.loaded import default_device, load_run

        device = device or default_device()
        cfgs = [check_run(folder) for _, folder in specs]
        per_base = Counter(_base_key(c) for c in cfgs if c.adapter.method != "full")
        pool, pack_pool, states, runs = SharedBase(), {}, {}, {}
        for (name, folder), run_cfg in zip(specs, cfgs):
            pack = run_cfg.train.packed_inference if packed is None else packed
            if run_cfg.adapter.method == "full" or per_base[_base_key(run_cfg)] == 1:
                # nothing to share its base with: predict's own path (LoRA merged, packed as predict packs)
                loaded = load_run(folder, device, merge=True, packed=pack)
                model = loaded.model.requires_grad_(False)
                own, shared = sum(p.numel() for p in model.parameters()), 0
            else:
                # unmerged (the base stays shared), unpacked (packing is done once per shared weight below)
                state = base_state(run_cfg, device, states)
                loaded = load_run(folder, device, merge=False, base_state=state, packed=False)
                model = loaded.model.requires_grad_(False)
                own, shared = pool.share(model, _base_key(loaded.cfg))
                if state is None:
                    _free_memory()  # the run's own copy of the base, just swapped out
                if pack:
                    _pack_shared(model, device, pack_pool)
            runs[name] = ServedRun(name, Path(folder), loaded, own, shared, _trainable(folder))
            cfg = loaded.cfg
            log(f"loaded {name} ({folder}): {cfg.adapter.method} over {cfg.model.name}, {own:,} own parameters, "
                f"{shared:,} shared")
        return cls(runs)


def labels_of(folder: Path) -> list:
    return json.loads((Path(folder) / "labels.json").read_text(encoding="utf-8"))
