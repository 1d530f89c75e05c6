"""Mixed-adapter batches: one forward over rows of different LoRA runs that share a base model.

A `MixedBase` holds ONE module tree of the base encoder (embeddings and layers, over the shared
checkpoint tensors of infer/pool.py). Each LoRA-target Linear that some run adapts is wrapped by a
`MultiLoraLinear` (the frozen weight once, and a dict run slot -> that run's (Aᵀ, s·Bᵀ)); each
LayerNorm that some run trained (adapter.train_layernorm) by a `MultiLayerNorm`; each run keeps its
own `Head` (pooling, the dense+tanh of BERT's pooler or RoBERTa's classifier when the head has one,
and the output layer; any label count). A forward is given the rows sorted by run, as segments
(slot, first row, end row): the base's matmuls run over all rows at once, and each wrapped layer adds
each segment's low-rank product (x[s:e] @ Aᵀ) @ s·Bᵀ, or applies that segment's own norm; then each
segment's head reads its rows' states (the layers: infer/mixed_layers.py). Rows are grouped
(Punica's SGMV) rather than gathered per row (BGMV: batched matmuls over per-row copies of A and B,
padded to the largest rank); bench/serve_many.py times both at MiniLM's shapes (bench/RESULTS.md).

Why exact: LoRA is y = W x + b + s·B(A x) per row (PEFT's unmerged forward, dropout off at
inference), and a LayerNorm, the attention (padding masked out), the pooling and the head read one
row at a time, so a row's logits do not depend on the other rows in its forward beyond float
rounding (tests/test_mixed.py checks 1e-4 against `lorafit predict`'s merged model).

Adding a run reads only its adapter folder (adapter_model.safetensors, adapter_config.json, its
config and labels) into slots: no PEFT model tree, no second copy of any base tensor; tokenizers
with the same files are shared. Removing a run drops its slots (the caller makes sure no forward
for it runs then: serve's registry unloads runs no request holds).

What the mixed path represents, and what falls back to infer/pool.py's per-run path (`why_not`
says which and why): plain LoRA (method lora, also PiSSA/OLoRA runs, saved as plain LoRA; rsLoRA's
scale) on Linear layers of the encoder and on the head's dense layer, with bias: none, over a
BertForSequenceClassification or RobertaForSequenceClassification base read from plain safetensors
in float32, heads model / lora_dense / cls_linear / mean_linear, trained LayerNorms. Falls back:
AdaLoRA, DoRA, trained biases, full fine-tuning, other architectures, remote code, any tensor in
the adapter file it does not know. Speed paths (same math, float rounding aside): the last layer on
the first token only (speed/first_token.py) runs in a forward whose heads all read the first token
alone (a mean-pooling head in the batch turns it off for that forward); prepacked weights
(speed/packed.py) are used for the base's Linears when the pool packs."""
from __future__ import annotations

import hashlib
import itertools
import json
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .mixed_layers import Head, MultiLayerNorm, MultiLoraLinear, Route

if TYPE_CHECKING:
    from .loaded import LoadedRun

ARCHS = {"BertForSequenceClassification": "bert", "RobertaForSequenceClassification": "roberta"}
HEADS = ("model", "lora_dense", "cls_linear", "mean_linear")
PREFIX = "base_model.model."  # PEFT's prefix of every key in adapter_model.safetensors


def _head_names(arch: str, prefix: str) -> tuple[str, str]:
    """(the head's dense layer, its output layer) by their names in the model."""
    return (f"{prefix}.pooler.dense", "classifier") if arch == "bert" else ("classifier.dense", "classifier.out_proj")


def read_adapter(run_dir: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config.json, the adapter's tensors by their plain names in the base model)."""
    from safetensors.torch import load_file

    folder = Path(run_dir) / "adapter"
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    state = load_file(str(folder / "adapter_model.safetensors"))
    return config, {k.removeprefix(PREFIX): v for k, v in state.items()}


def why_not(cfg, adapter_config: Optional[dict] = None) -> Optional[str]:
    """None when a run's config (and adapter_config.json, when read) can join a MixedBase, else why not
    (the per-run path computes it; MixedBase.add still refuses a tensor it does not know)."""
    a = cfg.adapter
    if a.method != "lora":
        return f"adapter.method {a.method} (the mixed path computes plain LoRA)"
    if a.dora or a.bias != "none":
        return "DoRA" if a.dora else f"adapter.bias {a.bias} (trained biases of adapted layers)"
    if cfg.model.trust_remote_code:
        return "model.trust_remote_code (an architecture the mixed path does not know)"
    if cfg.head.type not in HEADS:
        return f"head.type {cfg.head.type}"
    return None if adapter_config is None else why_not_config(adapter_config)


def _identity(folder: Path) -> str:
    """The tokenizer files' contents, hashed: runs with equal files share one tokenizer object."""
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "added_tokens")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


class NotMixable(Exception):
    """A run this MixedBase cannot represent exactly (the caller loads it the per-run way)."""


class MixedBase:
    """One base encoder, any number of LoRA runs over it (see the module docstring). model: the base's
    sequence classification model built over the shared checkpoint tensors (load_base(state=...))."""

    def __init__(self, model: nn.Module, device: torch.device, key: tuple = ()):
        from ..model.heads import encoder_of

        arch = ARCHS.get(type(model).__name__)
        if arch is None:
            raise NotMixable(f"{type(model).__name__} (the mixed path knows {', '.join(ARCHS)})")
        if next(model.parameters()).dtype != torch.float32:
            raise NotMixable(f"{next(model.parameters()).dtype} weights (the mixed path computes float32)")
        self.arch, self.key, self.device = arch, key, device
        self.prefix, self.encoder = encoder_of(model)
        self.config = model.config
        # the head layers' frozen weights (lora_dense heads adapt them); the base's own head is not used
        self.frozen = {n: p.detach() for n, p in model.named_parameters()
                       if not n.startswith((f"{self.prefix}.embeddings.", f"{self.prefix}.encoder."))}
        self.encoder.pooler = None  # every run's pooling is its own Head
        self.encoder.requires_grad_(False).eval()
        self.modules = dict(self.encoder.named_modules())
        self.route = Route()
        self._first_token_layer(model)
        self.heads: dict[int, Head] = {}
        self.owners: dict[int, list[nn.Module]] = {}  # slot -> wrapped modules holding its tensors
        self.tokenizers: dict[str, object] = {}
        self.lock = threading.Lock()  # add/remove (forwards read the dicts without it)
        self._slots = itertools.count()
        self._shared: Optional[int] = None
        self.pad: Optional[int] = None  # the padding token id of every run's tokenizer (the first run's)

    # ---------------------------------------------------------------- adding and removing runs

    def add(self, adapter_config: dict, state: dict[str, torch.Tensor], head_type: str, first_token: bool = True) -> int:
        """A run's adapter into new slots; its slot number. NotMixable (nothing added) when a tensor or
        setting is not one this path represents exactly. first_token: the run's speed.last_layer_first_token."""
        reason = why_not_config(adapter_config)
        if reason:
            raise NotMixable(reason)
        r, alpha = adapter_config["r"], adapter_config["lora_alpha"]
        scale = alpha / r ** 0.5 if adapter_config.get("use_rslora") else alpha / r
        dense_name, out_name = _head_names(self.arch, self.prefix)
        loras, norms, head = {}, {}, {}
        for key, t in state.items():
            module, _, leaf = key.rpartition(".")
            owner, _, kind = module.rpartition(".")
            if kind in ("lora_A", "lora_B") and leaf == "weight":
                loras.setdefault(owner, {})[kind] = t.to(self.device, torch.float32)
            elif module in (dense_name, out_name) and leaf in ("weight", "bias"):
                head[key] = t.to(self.device, torch.float32)
            elif isinstance(self._module(module), nn.LayerNorm) and leaf in ("weight", "bias"):
                norms.setdefault(module, {})[leaf] = t.to(self.device, torch.float32)
            else:
                raise NotMixable(f"adapter tensor {key} (not LoRA A/B, a LayerNorm or the head)")
        for name, ab in loras.items():
            if set(ab) != {"lora_A", "lora_B"} or (name != dense_name and not isinstance(self._module(name), nn.Linear)):
                raise NotMixable(f"LoRA on {name} (the mixed path adapts Linear layers of the encoder and the head)")
        if any(set(v) != {"weight", "bias"} for v in norms.values()):
            raise NotMixable("a LayerNorm with only one of weight and bias trained")
        built = self._head(head_type, head, loras.pop(dense_name, None), scale)
        built.first_token = first_token and built.pool == "cls"
        with self.lock:
            slot = next(self._slots)
            owners = []
            for name, ab in loras.items():
                wrapped = self._wrap(name, MultiLoraLinear)
                wrapped.loras[slot] = (ab["lora_A"].t().contiguous(), (ab["lora_B"] * scale).t().contiguous())
                owners.append(wrapped)
            for name, wb in norms.items():
                wrapped = self._wrap(name, MultiLayerNorm)
                wrapped.own[slot] = (wb["weight"], wb["bias"])
                owners.append(wrapped)
            self.owners[slot], self.heads[slot] = owners, built
        return slot

    def remove(self, slot: int) -> None:
        """Drop a run's slots (no forward for it may run now); wrapped layers stay (they pass rows through)."""
        with self.lock:
            for module in self.owners.pop(slot, ()):
                getattr(module, "loras", {}).pop(slot, None)
                getattr(module, "own", {}).pop(slot, None)
            self.heads.pop(slot, None)

    def tokenizer(self, cfg, folder: Path):
        """The run's tokenizer (its adapter folder's files), one object per distinct set of files."""
        from ..model.load import load_tokenizer

        key = _identity(folder)
        with self.lock:
            found = self.tokenizers.get(key)
        if found is None:
            found = load_tokenizer(cfg.model, str(folder))
            with self.lock:
                found = self.tokenizers.setdefault(key, found)
        return found

    def pad_id(self, tokenizer) -> int:
        """The base's padding id, set by the first run's tokenizer."""
        with self.lock:
            if self.pad is None:
                self.pad = tokenizer.pad_token_id
            return self.pad

    def own_parameters(self, slot: int) -> int:
        n = sum(t.numel() for m in self.owners.get(slot, ()) for t in (*getattr(m, "loras", {}).get(slot, ()),
                                                                         *getattr(m, "own", {}).get(slot, ())))
        h = self.heads.get(slot)
        return n + (0 if h is None else sum(t.numel() for part in (h.out, h.dense_lora) if part for t in part)
                    + (0 if h.dense is None or h.dense_lora is not None else sum(t.numel() for t in h.dense)))

    def shared_parameters(self) -> int:
        if self._shared is None:  # counted once: the base's parameters do not change
            self._shared = sum(p.numel() for p in self.encoder.parameters())
        return self._shared

    def _module(self, name: str) -> Optional[nn.Module]:
        """A module of the base model by its full name (prefix included), wrapped or not."""
        found = self.modules.get(name.removeprefix(self.prefix + "."))
        return getattr(found, "base", found) if isinstance(found, (MultiLoraLinear, MultiLayerNorm)) else found

    def _wrap(self, name: str, kind):
        """The wrapper of the encoder's module `name` (wrapped on first use)."""
        local = name.removeprefix(self.prefix + ".")
        current = self.modules[local]
        if isinstance(current, kind):
            return current
        wrapped = kind(current, self.route)
        parent, _, child = local.rpartition(".")
        setattr(self.modules[parent] if parent else self.encoder, child, wrapped)
        self.modules[local] = wrapped
        return wrapped

    def _head(self, head_type: str, head: dict, dense_lora: Optional[dict], scale: float) -> Head:
        dense_name, out_name = _head_names(self.arch, self.prefix)

        def pair(name: str, where: dict) -> tuple[torch.Tensor, torch.Tensor]:
            try:
                return where[f"{name}.weight"], where[f"{name}.bias"]
            except KeyError:
                raise NotMixable(f"head.type {head_type}: {name} not found") from None

        out = pair(out_name, head)
        if head_type in ("cls_linear", "mean_linear"):
            if dense_lora or any(k.startswith(dense_name + ".") for k in head):
                raise NotMixable(f"head.type {head_type} with a dense layer")
            return Head("cls" if head_type == "cls_linear" else "mean", out)
        if head_type == "model":
            return Head("cls", out, pair(dense_name, head))
        if dense_lora is None:  # lora_dense: the base's frozen dense layer with the run's LoRA
            raise NotMixable(f"head.type lora_dense without LoRA on {dense_name}")
        lora = (dense_lora["lora_A"].t().contiguous(), (dense_lora["lora_B"] * scale).t().contiguous())
        return Head("cls", out, pair(dense_name, self.frozen), lora)

    def _first_token_layer(self, model: nn.Module) -> None:
        """speed/first_token.py's last layer, switched per forward: on when every head in it reads the
        first token alone (a mean-pooling head in the batch needs every token's final state)."""
        from ..speed import Where, first_token

        self.short_layer = first_token.why_off(model, Where(self.device)) is None
        if self.short_layer:
            layer = first_token.last_layer(model)
            short, plain, route = first_token.layer_forward(layer), layer.forward, self.route
            layer.forward = lambda *args, **kw: (short if route.first_token else plain)(*args, **kw)

    # ---------------------------------------------------------------- computing

    @torch.inference_mode()
    def forward(self, batch: dict, segments: Sequence[tuple[int, int, int]]) -> list[np.ndarray]:
        """One forward over a padded batch (data.batches.Collator's) whose rows are cut into segments
        (slot, first row, end row), contiguous and covering every row: each segment's float32 logits."""
        batch = {k: v.to(self.device) for k, v in batch.items()}
        self.route.segments = tuple(segments)
        self.route.first_token = self.short_layer and all(self.heads[slot].first_token for slot, _, _ in segments)
        try:
            hidden = self.encoder(**batch, return_dict=True).last_hidden_state
            mask = batch["attention_mask"]
            return [self.heads[slot](hidden[s:e], mask[s:e]).float().cpu().numpy() for slot, s, e in segments]
        finally:
            self.route.segments = ()


def why_not_config(pc: dict) -> Optional[str]:
    """adapter_config.json's settings the mixed path does not represent (why_not's second half)."""
    if pc.get("peft_type", "LORA") != "LORA" or pc.get("use_dora") or pc.get("bias", "none") != "none":
        return "adapter_config.json: not plain LoRA"
    if pc.get("rank_pattern") or pc.get("alpha_pattern") or pc.get("fan_in_fan_out") or pc.get("layer_replication"):
        return "adapter_config.json: per-layer ranks or alphas, fan_in_fan_out or layer replication"
    return None


def load_run(base: MixedBase, run_dir: str | Path, folder=None) -> "LoadedRun":
    """The run at run_dir as a slot of `base`: a LoadedRun whose backend computes its rows alone, and
    whose `mixed` lets engine.forward_rows put them in one forward with other runs' rows. folder: its
    runs.compat.RunFolder when already read. NotMixable when the per-run path must load it."""
    from .. import tasks
    from ..data.encoding import Encoding
    from ..errors import LorafitError
    from ..runs.compat import cap_max_length, read_run_folder
    from .loaded import LoadedRun

    run_dir = Path(run_dir)
    folder = folder or read_run_folder(run_dir)
    cfg = folder.cfg
    reason = why_not(cfg)
    if reason:
        raise NotMixable(reason)
    weights = run_dir / "adapter"
    if not weights.is_dir():
        raise LorafitError(f"{run_dir}: no trained weights (adapter/ missing); did training finish?")
    thresholds = tasks.task_of(cfg).read_thresholds(run_dir)  # refuses a tuned task's run without its thresholds
    adapter_config, state = read_adapter(run_dir)
    slot = base.add(adapter_config, state, cfg.head.type, cfg.speed.resolved("last_layer_first_token"))
    try:
        width = base.heads[slot].out[0].shape[0]
        if width != len(folder.labels):
            raise NotMixable(f"a head of {width} outputs for {len(folder.labels)} labels")
        tokenizer = base.tokenizer(cfg, weights)
        if tokenizer.pad_token_id != base.pad_id(tokenizer):
            raise NotMixable("a tokenizer with another padding token than the other runs over this base")
        cfg = cap_max_length(cfg, base.config, tokenizer)
    except BaseException:
        base.remove(slot)
        raise

    def backend(batch: dict) -> np.ndarray:
        return base.forward(batch, [(slot, 0, len(batch["input_ids"]))])[0]

    return LoadedRun(None, tokenizer, Encoding.of(cfg.data), backend, cfg=cfg, labels=folder.labels, task=cfg.data.task,
                     temperature=folder.temperature, thresholds=thresholds, device=base.device, run_dir=run_dir,
                     mixed=(base, slot))


def forward_rows(runs: Sequence, ids: Sequence[Sequence[int]], types: Optional[Sequence] = None) -> list[np.ndarray]:
    """Rows of runs that are slots of one MixedBase (runs[i] is row i's), in one forward: each row's
    logits (its run's width), in the given order. Rows are sorted by slot into segments here."""
    from ..data.batches import Collator

    base = runs[0].mixed[0]
    order = sorted(range(len(ids)), key=lambda i: runs[i].mixed[1])
    segments, start = [], 0
    for slot, group in itertools.groupby(order, key=lambda i: runs[i].mixed[1]):
        n = len(list(group))
        segments.append((slot, start, start + n))
        start += n
    if types is None or all(t is None for t in types):
        items = [(ids[i], None) for i in order]
    else:  # single texts beside pairs: segment 0 throughout, as their tokenizer would give
        items = [(ids[i], None, types[i] or []) for i in order]
    parts = base.forward(Collator(base.pad)(items), segments)
    out: list = [None] * len(ids)
    for (slot, s, e), part in zip(segments, parts):
        for k, i in enumerate(order[s:e]):
            out[i] = part[k]
    return out
