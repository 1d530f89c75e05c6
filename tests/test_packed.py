"""Linear layers on prepacked oneDNN weights (packed.py) change nothing but speed."""
import numpy as np
import pytest
import torch

from conftest import synthetic_rows, tiny_config
from lorafit.speed import Where, packed
from lorafit.model import build_model

CPU = Where("cpu")
pytestmark = pytest.mark.skipif(packed.why_off(None, CPU) is not None, reason=str(packed.why_off(None, CPU)))


def _count(model):
    return sum("_lorafit_packed" in vars(m) for m in model.modules())


def test_one_layer_same_output_any_shape_and_stride():
    torch.manual_seed(0)
    lin = torch.nn.Linear(48, 80)
    x = torch.randn(5, 7, 96)[..., ::2]  # strided: every other feature
    ref = lin(x)
    assert packed.install(lin, CPU).startswith("1 Linear layer(s)") and _count(lin) == 1
    with torch.inference_mode():
        for inp in (x, x[:, :1], x[0], torch.randn(3, 48), torch.randn(0, 48)):
            torch.testing.assert_close(lin(inp), torch.nn.functional.linear(inp, lin.weight, lin.bias),
                                       atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lin(x), ref.detach(), atol=1e-5, rtol=1e-5)
        no_bias = torch.nn.Linear(48, 8, bias=False)
        packed.install(no_bias, CPU)
        torch.testing.assert_close(no_bias(x), x @ no_bias.weight.T, atol=1e-5, rtol=1e-5)


def test_runs_over_one_base_share_one_packed_copy_of_each_weight():
    """Where.shared (serve's runs over one base): a weight packed for one run is not packed again for the
    next; without it each model packs its own copy."""
    torch.manual_seed(0)
    base = torch.nn.Linear(16, 8)
    a, b = torch.nn.Sequential(torch.nn.Linear(16, 8)), torch.nn.Sequential(torch.nn.Linear(16, 8))
    for m in (a, b):  # both over the same frozen weight, each with its own bias (as a run's own tensors)
        m[0].weight = base.weight
    pool: dict = {}
    packed.install(a, Where("cpu", shared=pool))
    packed.install(b, Where("cpu", shared=pool))
    assert len(pool) == 1 and a[0]._lorafit_packed is b[0]._lorafit_packed
    c = torch.nn.Sequential(torch.nn.Linear(16, 8))
    c[0].weight = base.weight
    packed.install(c, CPU)
    assert c[0]._lorafit_packed is not a[0]._lorafit_packed
    x = torch.randn(3, 16)
    with torch.inference_mode():
        for m in (a, b, c):
            torch.testing.assert_close(m(x), torch.nn.functional.linear(x, base.weight, m[0].bias), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["tiny_bert", "tiny_roberta"])
def test_model_same_logits_state_and_gradients(kind, request, synth_csv):
    from transformers import AutoTokenizer

    from lorafit.data.batches import Collator

    model_dir = request.getfixturevalue(kind)
    torch.manual_seed(0)
    model, _ = build_model(tiny_config(model_dir, synth_csv, adapter__targets="[query,value,dense]"), list("abcd"))
    model = model.merge_and_unload().eval()
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    ids = tok(synthetic_rows(12, seed=3)["text"].tolist(), truncation=True, max_length=32)["input_ids"]
    batch = Collator(tok.pad_token_id)([(x, 0) for x in ids])
    batch.pop("labels")
    with torch.inference_mode():
        ref = model(**batch).logits
    keys = list(model.state_dict())
    packed.install(model, CPU)
    n = _count(model)
    assert n == sum(type(m) is torch.nn.Linear for m in model.modules()) > 0
    assert list(model.state_dict()) == keys  # the packed copy is no parameter or buffer
    with torch.inference_mode():
        torch.testing.assert_close(model(**batch).logits, ref, atol=1e-5, rtol=1e-5)
    # With gradients on, nn.Linear's own path: a backward pass works and matches the plain model's.
    model.requires_grad_(True)
    model(**batch).logits.sum().backward()
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    packed.remove(model)
    assert _count(model) == 0
    model.zero_grad()
    model(**batch).logits.sum().backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(grads[k], p.grad, atol=1e-6, rtol=1e-5, msg=k)


def test_load_trained_packs_unless_switched_off(trained_run):
    from lorafit.predict import predict_logits
    from lorafit.runs.weights import load_trained

    run_dir, recipe, _ = trained_run
    texts = synthetic_rows(40, seed=11)["text"].tolist()

    def count(model):
        return sum("_lorafit_packed" in vars(m) for m in model.modules())

    model, tok, _, _ = load_trained(run_dir, merge=True)  # the run's speed.packed_inference: true (default)
    assert recipe.cfg.speed.resolved("packed_inference") and count(model) > 0
    plain, _, _, _ = load_trained(run_dir, merge=False, first_token=False, packed=False)
    assert count(plain) == 0
    a = predict_logits(model, tok, texts, 32, batch_size=8)
    b = predict_logits(plain, tok, texts, 32, batch_size=8)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert (a.argmax(-1) == b.argmax(-1)).all()


def test_says_why_it_is_off():
    assert "CPU" in packed.why_off(None, Where("cuda"))
    assert packed.why_off(None, Where(torch.device("cpu"))) is None
    with torch.backends.mkldnn.flags(enabled=False):  # the user switched oneDNN off
        assert "enabled is False" in packed.why_off(None, CPU)
