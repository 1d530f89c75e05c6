"""A run's trained weights: written in PEFT's format (or the whole model for full fine-tuning)
and read back exactly, with the same head surgery and the speed paths that apply to prediction."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from ..config import RunConfig
from ..errors import LorafitError
from ..io import follow_umask
from .directory import read_run


def initial_lora(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """LoRA A/B right after a PiSSA/OLoRA init, keyed as in adapter_model.safetensors (see to_plain_lora)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().to("cpu").clone() for k, v in get_peft_model_state_dict(model).items()
            if ".lora_A." in k or ".lora_B." in k}


def to_plain_lora(folder: Path, init: dict[str, torch.Tensor]) -> None:
    """Rewrite a saved PiSSA/OLoRA adapter as plain LoRA over the unmodified base weights.

    Those inits move s·B0A0 out of the base: W_res = W - s·B0A0, and training gives W_res + s·BA
    = W + s·[B | -B0][A ; A0], a LoRA of rank 2r with the same scale s (alpha doubled, or times √2
    with rsLoRA). PEFT's own conversion (save_pretrained(path_initial_model_for_weight_conversion))
    drops modules_to_save, i.e. the trained head, so lorafit does the same algebra itself and keeps
    every other tensor as saved."""
    from safetensors.torch import load_file, save_file

    weights = folder / "adapter_model.safetensors"
    state = load_file(str(weights))
    missing = [k for k in init if k not in state]
    if missing:
        raise RuntimeError(f"{weights}: initial LoRA tensors {missing[:2]} not in the saved adapter")
    for k, v0 in init.items():
        state[k] = torch.cat([state[k], v0], 0) if ".lora_A." in k else torch.cat([state[k], -v0], 1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(weights), metadata={"format": "pt"})
    path = folder / "adapter_config.json"
    pc = json.loads(path.read_text(encoding="utf-8"))
    pc["r"] *= 2
    pc["lora_alpha"] *= 2 ** 0.5 if pc.get("use_rslora") else 2
    pc["init_lora_weights"] = True
    path.write_text(json.dumps(pc, indent=2), encoding="utf-8")


def weights_folder(cfg: RunConfig) -> str:
    """The run directory's folder of final weights: model/ for full fine-tuning, else adapter/ (PEFT's format)."""
    return "model" if cfg.adapter.method == "full" else "adapter"


CLASSIFIER_CONFIG = "classifier_config.json"  # in adapter/: AutoConfig.from_pretrained(adapter / CLASSIFIER_CONFIG)


def save_weights(model: torch.nn.Module, tokenizer, run_dir: Path, cfg: RunConfig,
                 lora_init: dict[str, torch.Tensor] | None = None) -> Path:
    """Final weights: PEFT format in adapter/ (loadable by PeftModel.from_pretrained) or, for full
    fine-tuning, the whole model in model/. Written to a temporary folder, then renamed.
    lora_init: the PiSSA/OLoRA starting A/B, to save as plain LoRA (to_plain_lora)."""
    name = weights_folder(cfg)
    final = run_dir / name
    tmp = run_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    if cfg.adapter.method == "adalora":
        # Saved at init_r with pruned ranks zeroed (no rank_pattern resize): reload is exact at any step.
        for pc in model.peft_config.values():
            pc.rank_pattern = None
    from ..model.load import quiet_transformers

    with quiet_transformers():  # a whole model (adapter.method: full) draws a "Writing model shards" bar
        model.save_pretrained(tmp, safe_serialization=True)
    if lora_init is not None:
        to_plain_lora(tmp, lora_init)
    tokenizer.save_pretrained(tmp)
    if name == "adapter":
        # adapter_config.json has no label map: ship the classifier's config (num_labels, id2label,
        # label2id) beside it. Not as config.json: transformers then takes adapter/ for a whole model
        # and AutoModelForSequenceClassification.from_pretrained(adapter/) stops finding the base.
        model.get_base_model().config.to_json_file(tmp / CLASSIFIER_CONFIG)
    follow_umask(tmp)  # safetensors wrote its file 0600
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def load_trained(run_dir: str | Path, *, merge: bool = False, device: str | torch.device = "cpu",
                 first_token: bool | None = None, packed: bool | None = None,
                 base_state: dict[str, torch.Tensor] | None = None):
    """(model in eval mode, tokenizer, cfg, label names) from a run directory.

    Adapters load through `PeftModel.from_pretrained` over the base model with the same head
    surgery as in training; merge=True folds LoRA into the base weights (no adapter overhead).
    first_token: run the last layer on the first token only where that applies (speed/first_token.py);
    None follows the run's speed.last_layer_first_token, False gives the plain model.
    packed: Linear layers on prepacked oneDNN weights on CPU (speed/packed.py; for inference only); None
    follows the run's speed.packed_inference.
    base_state: the base checkpoint's tensors already in memory (model.load.read_checkpoint): the
    run is built over them instead of reading the base from disk, and holds them, not a copy (so
    only for unmerged adapter runs: a merge or a full fine-tuning load would write into them)."""
    from ..model import head_plan
    from ..model.load import load_base, load_tokenizer
    from .compat import cap_max_length

    run_dir = Path(run_dir)
    cfg, names = read_run(run_dir)
    weights = run_dir / weights_folder(cfg)
    if not weights.is_dir():
        raise LorafitError(f"{run_dir}: no trained weights ({weights.name}/ missing); did training finish?")
    tokenizer = load_tokenizer(cfg.model, str(weights))
    if base_state is not None and (merge or cfg.adapter.method == "full"):
        # both write into the base tensors (merge: LoRA folded in; full: the run's weights copied over)
        raise ValueError("load_trained: base_state is for unmerged adapter runs; it would be overwritten")
    base = load_base(cfg.model, names, state=base_state)
    cfg = cap_max_length(cfg, base.config, tokenizer)
    head_plan(base, cfg)
    if cfg.adapter.method == "full":
        from safetensors.torch import load_file

        state = load_file(str(weights / "model.safetensors"))
        missing, unexpected = base.load_state_dict(state, strict=False)
        if unexpected or [m for m in missing if m not in getattr(base, "_tied_weights_keys", None) or []]:
            raise LorafitError(f"{weights}: weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
        model = base
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, str(weights))
        if merge:
            model = model.merge_and_unload()
    from ..speed import Where, apply

    where = Where(device, cfg)
    if cfg.speed.resolved("last_layer_first_token") if first_token is None else first_token:
        from ..speed import first_token as ft

        apply(ft, model, where)
    model = model.to(device).eval()
    if cfg.speed.resolved("packed_inference") if packed is None else packed:
        from ..speed import packed as packing

        apply(packing, model, where)
    return model, tokenizer, cfg, names
