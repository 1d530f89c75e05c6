"""A standalone transformers folder: LoRA folded into the base weights, saved with safetensors, that
AutoModelForSequenceClassification.from_pretrained loads with neither peft nor lorafit.

Only heads that are the architecture's own head map onto it: head.type model and lora_dense (its
LoRA on the dense layer merges like any other). mean_linear and cls_linear replace that head with
a pooling + linear that transformers' classes do not have; from_pretrained would silently build
the architecture's own head instead (different logits), so they are refused and sent to ONNX."""
from __future__ import annotations

from pathlib import Path

from ..errors import LorafitError

OWN_HEADS = ("model", "lora_dense")


def check_mappable(head_type: str) -> None:
    if head_type not in OWN_HEADS:
        raise LorafitError(f"--format merged: head.type {head_type} is lorafit's own pooling head, which "
                           "AutoModelForSequenceClassification cannot build (it would load a different head); "
                           "use --format onnx, which keeps every head")


def save_merged(model, folder: Path) -> None:
    from ..model.load import quiet_transformers

    with quiet_transformers():  # its "Writing model shards" bar: the export's own log says what was written
        model.save_pretrained(folder, safe_serialization=True)


def load_merged(folder: Path):
    from transformers import AutoModelForSequenceClassification

    from ..model.load import quiet_transformers

    with quiet_transformers():
        model, info = AutoModelForSequenceClassification.from_pretrained(str(folder), output_loading_info=True)
    missing = list(info.get("missing_keys", ())) + list(info.get("unexpected_keys", ()))
    if missing:  # a head transformers built afresh: the export would predict with random weights
        raise RuntimeError(f"merged export: {folder} reloads with mismatched weights {missing[:3]}")
    return model.eval()
