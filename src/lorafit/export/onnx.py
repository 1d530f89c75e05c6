"""ONNX graph of a merged model: inputs input_ids and attention_mask (int64, dynamic batch and
sequence axes; token_type_ids too for a text-pair run on a model with segment ids), output logits;
run by ONNX Runtime through lorafit's own engine (infer/loaded.ort_backend); int8 dynamic quantisation.

The exporter is torch's TorchScript one (dynamo=False). On torch 2.13 both exporters give the same
logits for every lorafit head (BERT and RoBERTa; model, lora_dense, mean_linear, cls_linear), but
the dynamo exporter takes 10-25x longer (7-11 s against 0.4 s on a tiny model, several minutes on
MiniLM under load) and logs pages of registry warnings; the check at export (export/check.py) is
what guarantees the graph whichever exporter made it."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

INPUTS = ("input_ids", "attention_mask")
SEGMENTS = "token_type_ids"  # a third input for text-pair runs whose model reads segment ids (BERT)
OPSET = 17  # LayerNormalization is a single op from 17; ONNX Runtime >= 1.14 runs it


class LogitsOnly(torch.nn.Module):
    """model(input_ids, attention_mask[, token_type_ids]) -> logits: the graph's one output, by position."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        if token_type_ids is None:
            return self.model(input_ids=input_ids, attention_mask=attention_mask).logits
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def graph_inputs(tokenizer, pairs: bool) -> tuple[str, ...]:
    """The graph's inputs: token_type_ids too for a text-pair run on a model with segment ids (its second
    text is segment 1); single texts are all segment 0, the model's default, so the graph leaves it out."""
    from ..data.encoding import uses_segment_ids

    return INPUTS + ((SEGMENTS,) if pairs and uses_segment_ids(tokenizer) else ())


def export_onnx(model: torch.nn.Module, tokenizer, path: Path, opset: int = OPSET, pairs: bool = False) -> tuple[str, ...]:
    """Write the graph; returns its input names (graph_inputs)."""
    inputs = graph_inputs(tokenizer, pairs)
    # two texts of different lengths: the traced graph sees real padding, as every batch will
    first = ["an example text for the export", "short"]
    enc = tokenizer(first, ["a second text", "and another one"] if pairs else None, padding=True, return_tensors="pt")
    args = tuple(enc[k].to(torch.long) for k in inputs)
    axes = {k: {0: "batch", 1: "sequence"} for k in inputs}
    axes["logits"] = {0: "batch"}
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer warnings
        torch.onnx.export(LogitsOnly(model).eval(), args, str(path), input_names=list(inputs), output_names=["logits"],
                          dynamic_axes=axes, opset_version=opset, dynamo=False, do_constant_folding=True)
    return inputs


def session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


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
