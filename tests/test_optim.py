import pytest
import torch

from lorafit.config import load_config
from lorafit.train.optim import build_optimizer, build_scheduler, lr_for


def test_tiered_layer_lrs_and_head_lr():
    cfg = load_config(None, ["optim.layer_lrs=[{layers: [0, 3], lr: 1e-5}, {layers: [4, 7], lr: 3e-4}, {layers: [8, 11], lr: 5e-4}]",
                             "optim.head_lr=1e-3", "optim.lr=2e-4"]).optim
    head = ["classifier"]
    assert lr_for("base_model.model.roberta.encoder.layer.2.attention.self.query.lora_A.default.weight", cfg, head) == 1e-5
    assert lr_for("roberta.encoder.layer.5.attention.self.value.lora_B.default.weight", cfg, head) == 3e-4
    assert lr_for("roberta.encoder.layer.11.output.dense.weight", cfg, head) == 5e-4
    assert lr_for("base_model.model.classifier.modules_to_save.default.dense.weight", cfg, head) == 1e-3
    assert lr_for("roberta.embeddings.word_embeddings.weight", cfg, head) == 2e-4


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_then_schedule(schedule):
    cfg = load_config(None, [f"optim.schedule={schedule}", "optim.warmup=10", "optim.lr=1.0"]).optim
    p = torch.nn.Parameter(torch.zeros(2, 2))
    opt = build_optimizer(torch.nn.ParameterList([p]), cfg, [])
    sched = build_scheduler(opt, cfg, 100)
    lrs = []
    for _ in range(100):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    end = {"cosine": 0.001, "linear": 0.012, "constant": 1.0}[schedule]
    assert lrs[-1] == pytest.approx(end, abs=0.01)


def test_no_weight_decay_on_vectors():
    cfg = load_config(None, ["optim.weight_decay=0.1"]).optim
    model = torch.nn.Linear(3, 3)
    opt = build_optimizer(model, cfg, [])
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decay[id(model.weight)] == 0.1 and decay[id(model.bias)] == 0.0
