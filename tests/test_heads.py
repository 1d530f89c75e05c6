"""Every head option trains and reloads exactly on RoBERTa and BERT; no head keeps a random frozen layer."""
import shutil

import numpy as np
import pytest
import torch

from conftest import assert_reload_exact, train_briefly
from lorafit.config import load_config
from lorafit.errors import LorafitError
from lorafit.model import build_model


@pytest.fixture(scope="module")
def tiny_bert_nopool(tiny_bert, tmp_path_factory):
    """A BERT checkpoint without pooler weights (as some MiniLM-style exports are)."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("models") / "tiny-bert-nopool"
    shutil.copytree(tiny_bert, folder)
    state = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in state.items() if "pooler" not in k}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder


@pytest.fixture(scope="module")
def tiny_roberta_cls(tiny_roberta, tmp_path_factory):
    """A RoBERTa checkpoint that has a classification head (classifier.dense pretrained)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("models") / "tiny-roberta-cls"
    torch.manual_seed(1)
    AutoModelForSequenceClassification.from_pretrained(str(tiny_roberta), num_labels=4).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(tiny_roberta)).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("head", ["model", "lora_dense", "cls_linear", "mean_linear"])
@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_head_trains_and_reloads_exactly(kind, head, request, synth_csv, tmp_path):
    model = request.getfixturevalue("tiny_roberta_cls" if kind == "roberta" else "tiny_bert")
    recipe, changed = train_briefly(model, synth_csv, tmp_path / "run", head__type=head, train__max_steps=1,
                                      optim__warmup=0)
    head_names = {"model": "classifier", "lora_dense": "out_proj" if kind == "roberta" else "classifier",
                  "cls_linear": "classifier", "mean_linear": "classifier"}[head]
    assert any(head_names in n for n in changed), changed
    assert_reload_exact(recipe, tmp_path / "run")


def test_bert_without_pooler_weights_never_keeps_a_random_frozen_pooler(tiny_bert_nopool, synth_csv, tmp_path):
    with pytest.raises(LorafitError, match=r"lora_dense keeps bert.pooler.dense frozen.*no pretrained weights"):
        build_model(load_config(None, [f"model.name={tiny_bert_nopool}", "head.type=lora_dense"]), list("abcd"))
    for head in ("cls_linear", "mean_linear"):  # the pooler is replaced by parameter-free pooling
        model, _ = build_model(load_config(None, [f"model.name={tiny_bert_nopool}", f"head.type={head}"]), list("abcd"))
        assert not [n for n, _ in model.named_parameters() if "pooler" in n]
    # head `model`: the (random) pooler trains, is saved with the adapter, and reloads exactly
    recipe, changed = train_briefly(tiny_bert_nopool, synth_csv, tmp_path / "run", head__type="model")
    assert any("pooler" in n for n in changed)
    assert_reload_exact(recipe, tmp_path / "run")


def test_lora_dense_refuses_a_roberta_base_checkpoint(tiny_roberta):
    """roberta-base has no classifier.dense: frozen, it would be random and differ at every reload."""
    with pytest.raises(LorafitError, match=r"classifier.dense frozen.*no pretrained weights"):
        build_model(load_config(None, [f"model.name={tiny_roberta}", "head.type=lora_dense"]), list("abcd"))


@pytest.mark.parametrize("kind", ["roberta", "bert"])
def test_mean_linear_is_a_masked_mean(kind, request):
    path = request.getfixturevalue(f"tiny_{kind}")
    cfg = load_config(None, [f"model.name={path}", "head.type=mean_linear", "adapter.dropout=0"])
    model, _ = build_model(cfg, list("abcd"))
    model.eval()
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 5, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    head = model.base_model.model.classifier
    linear = head.modules_to_save["default"] if hasattr(head, "modules_to_save") else head
    linear = getattr(linear, "out_proj", linear)
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits
        hidden = model.base_model.model.base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        mean = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        np.testing.assert_allclose(logits.numpy(), linear(mean).numpy(), atol=1e-5)
