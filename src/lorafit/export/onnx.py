"""ONNX graph of a merged model: inputs input_ids and attention_mask (int64, dynamic batch and
sequence axes), output logits; run by ONNX Runtime in lorafit's own length-sorted batches; int8
dynamic quantisation.

The exporter is torch's TorchScript one (dynamo=False). On torch 2.13 both exporters give the same
logits for every lorafit head (BERT and RoBERTa; model, lora_dense, mean_linear, cls_linear), but
the dynamo exporter takes 10-25x longer (7-11 s against 0.4 s on a tiny model, several minutes on
MiniLM under load) and logs pages of registry warnings; the check at export (export/check.py) is
what guarantees the graph whichever exporter made it."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

INPUTS = ("input_ids", "attention_mask")
OPSET = 17  # LayerNormalization is a single op from 17; ONNX Runtime >= 1.14 runs it


class LogitsOnly(torch.nn.Module):
    """model(input_ids, attention_mask) -> logits: the graph's one output, by position."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


def export_onnx(model: torch.nn.Module, tokenizer, path: Path, opset: int = OPSET) -> None:
    # two texts of different lengths: the traced graph sees real padding, as every batch will
    enc = tokenizer(["an example text for the export", "short"], padding=True, return_tensors="pt")
    args = tuple(enc[k].to(torch.long) for k in INPUTS)
    axes = {"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
            "logits": {0: "batch"}}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(LogitsOnly(model).eval(), args, str(path), input_names=list(INPUTS), output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def ort_logits(sess, tokenizer, texts: list[str], max_length: int, batch_size: int = 64) -> np.ndarray:
    """Logits in input order, batched as `lorafit predict` batches (length-sorted, padded per batch)."""
    from ..data.batches import Collator, LengthGroupedBatches, TokenDataset
    from ..data.tokens import tokenize

    ds = TokenDataset(tokenize(tokenizer, texts, max_length)[0])
    collate = Collator(tokenizer.pad_token_id)
    out = None
    for idx in LengthGroupedBatches(ds.lengths(), batch_size, shuffle=False):
        batch = collate([ds[i] for i in idx])
        logits = sess.run(["logits"], {k: batch[k].numpy().astype(np.int64) for k in INPUTS})[0]
        if out is None:
            out = np.zeros((len(ds), logits.shape[-1]), dtype=np.float32)
        out[np.asarray(idx)] = logits
    return out


def quantize_int8(src: Path, dst: Path) -> None:
    """ONNX Runtime's dynamic quantisation: int8 weights of MatMul/Gemm, activations quantised per batch."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.disable(logging.WARNING)  # its root-logger advice to pre-process (shape inference) first: optional
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    finally:
        logging.disable(logging.NOTSET)
