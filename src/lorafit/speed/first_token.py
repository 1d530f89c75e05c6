"""Last encoder layer on the first token only: the heads that read token 0 alone never see the rest.

BERT's head reads the pooler, which takes the first token's final state; RoBERTa's classifier takes
`features[:, 0]`; `head.type: cls_linear` pools the first token. So in the encoder's last layer the
queries, attention outputs and feed-forward of every other token are computed (and differentiated)
for nothing. Here the last layer computes keys and values for every token (the first token attends
to all of them) and everything else for the first token alone: 10 of the layer's 12 hidden x hidden
matmul units per token, a sixth of MiniLM-L6's encoder work and a twelfth of roberta-base's, in the
forward and the backward pass. The math is the same; only the order of float sums may differ
(tests/test_first_token.py: logits and gradients equal to 1e-5).

`why_off` says when it does not apply (mean pooling reads every token; other architectures' layers
and heads are not known to this code; the prefix cache may already compute every layer once).
The switch is an instance attribute over the layer's forward: no parameter, name or saved file
changes, and `remove` puts the layer's own forward back.
"""
from __future__ import annotations

import types

import torch
from torch import nn

from ..model.heads import encoder_of

# Classes whose head reads only the first token's final state (checked in their transformers code,
# and tested); `head.type: cls_linear` keeps that true, mean_linear does not.
FIRST_TOKEN_HEADS = {"BertForSequenceClassification", "RobertaForSequenceClassification"}
ATTENTION = {"sdpa", "eager", "lorafit_sdpa"}  # implementations that take a query shorter than the keys


def _base(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_base_model", None)  # PeftModel
    return get() if callable(get) else model


def last_layer(model: nn.Module) -> nn.Module | None:
    _, enc = encoder_of(_base(model))
    layers = getattr(getattr(enc, "encoder", None), "layer", None)
    return layers[-1] if isinstance(layers, nn.ModuleList) and len(layers) else None


def why_off(model: nn.Module, where) -> str | None:
    """None when the first-token layer applies, else the reason it is off (for the run log). The head
    type is the run's head.type (where.cfg); without a config, the model's own head."""
    head_type = where.cfg.head.type if where.cfg is not None else "model"
    base = _base(model)
    name = type(base).__name__
    if name not in FIRST_TOKEN_HEADS:
        return f"{name}'s head is not known to read the first token only"
    if head_type == "mean_linear":
        return "head.type: mean_linear reads every token"
    layer = last_layer(base)
    sa = getattr(getattr(layer, "attention", None), "self", None)
    if sa is None or not all(isinstance(getattr(sa, n, None), nn.Module) for n in ("query", "key", "value")):
        return "the last encoder layer has no attention.self.query/key/value (another layer type, or cached away)"
    if getattr(base.config, "is_decoder", False) or getattr(base.config, "add_cross_attention", False):
        return "a decoder layer (causal or cross-attention)"
    impl = base.config._attn_implementation
    if impl not in ATTENTION:
        return f"attention implementation {impl} (supported: {', '.join(sorted(ATTENTION))})"
    return None


def _forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
    """BertLayer / RobertaLayer forward, returning (batch, 1, hidden): the first token's output."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
    from transformers.models.bert.modeling_bert import eager_attention_forward

    sa = self.attention.self
    batch, length, _ = hidden_states.shape
    first = hidden_states[:, :1]
    heads = lambda x, n: x.view(batch, n, -1, sa.attention_head_size).transpose(1, 2)
    query = heads(sa.query(first), 1)
    key, value = heads(sa.key(hidden_states), length), heads(sa.value(hidden_states), length)
    if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
        attention_mask = attention_mask[:, :, :1]  # the first query's row of (batch, 1, queries, keys)
    attend = ALL_ATTENTION_FUNCTIONS.get_interface(sa.config._attn_implementation, eager_attention_forward)
    out, _ = attend(sa, query, key, value, attention_mask, dropout=sa.dropout.p if sa.training else 0.0,
                    scaling=getattr(sa, "scaling", None))
    attention_output = self.attention.output(out.reshape(batch, 1, -1), first)
    return self.output(self.intermediate(attention_output), attention_output)


def layer_forward(layer: nn.Module):
    """The first-token forward bound to `layer` (what install puts in place; infer/mixed.py switches
    between it and the layer's own forward per batch, as the heads in the batch allow)."""
    return types.MethodType(_forward, layer)


def install(model: nn.Module, where) -> str:
    layer = last_layer(model)
    layer.forward = types.MethodType(_forward, layer)
    return "the head reads nothing else"


def remove(model: nn.Module) -> None:
    layer = last_layer(model)
    if layer is not None and "forward" in vars(layer):
        del layer.forward
