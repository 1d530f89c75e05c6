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


def _lrs(sched, opt, n: int) -> list[float]:
    out = []
    for _ in range(n):
        out.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    return out


def _step_schedule(*sets, steps_per_epoch: int = 1):
    cfg = load_config(None, ["optim.schedule=step", "optim.lr=1.0", *sets]).optim
    opt = build_optimizer(torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(2, 2))]), cfg, [])
    return build_scheduler(opt, cfg, 100, steps_per_epoch), opt


def test_step_schedule_is_torchs_steplr_after_warmup():
    sched, opt = _step_schedule("optim.warmup=0", "optim.step_size=30", "optim.step_factor=0.5")
    ref_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    ref = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=30, gamma=0.5)
    assert _lrs(sched, opt, 100) == pytest.approx(_lrs(ref, ref_opt, 100), rel=1e-12)
    # warmup ramps up to the schedule; decays count from the first step, warmup included
    sched, opt = _step_schedule("optim.warmup=10", "optim.step_size=30", "optim.step_factor=0.5")
    lrs = _lrs(sched, opt, 100)
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == lrs[29] == pytest.approx(1.0)
    assert lrs[30] == pytest.approx(0.5) and lrs[60] == pytest.approx(0.25) and lrs[99] == pytest.approx(0.125)


def test_step_schedule_by_epoch_decays_at_each_epochs_start():
    sched, opt = _step_schedule("optim.warmup=0", steps_per_epoch=25)  # step_size: epoch, step_factor 0.1
    lrs = _lrs(sched, opt, 60)
    assert lrs[24] == 1.0 and lrs[25] == pytest.approx(0.1) and lrs[49] == pytest.approx(0.1)
    assert lrs[50] == pytest.approx(0.01)


def test_step_schedule_state_restores_exactly(tmp_path):
    """What a checkpoint keeps (scheduler.pt, read back weights_only) continues the schedule exactly."""
    sets = ("optim.warmup=4", "optim.step_size=7", "optim.step_factor=0.3")
    sched, opt = _step_schedule(*sets)
    _lrs(sched, opt, 12)
    torch.save(sched.state_dict(), tmp_path / "scheduler.pt")
    rest = _lrs(sched, opt, 20)
    again, opt2 = _step_schedule(*sets)
    again.load_state_dict(torch.load(tmp_path / "scheduler.pt", weights_only=True))
    assert _lrs(again, opt2, 20) == rest
