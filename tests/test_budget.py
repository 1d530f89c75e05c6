from pathlib import Path

import pytest

from conftest import run_cli
from lorafit.config import load_config
from lorafit.errors import BudgetError, LorafitError
from lorafit.model import budget_table, check_budget, format_table

ROBERTA = Path(__file__).resolve().parents[2] / "shared" / "models" / "roberta-base-config"
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
needs_roberta = pytest.mark.skipif(not ROBERTA.is_dir(), reason="../shared/models/roberta-base-config missing")


def count(*sets):
    cfg = load_config(None, [f"model.name={ROBERTA}", *sets])
    rows, _ = budget_table(cfg, LABELS)
    return sum(r.total for r in rows), rows


@needs_roberta
def test_reference_counts_roberta_base():
    assert count()[0] == 888_580                       # seeds' recipe: LoRA r=8 q,v + head
    assert count("adapter.r=2", "adapter.targets=[query]")[0] == 630_532


@needs_roberta
def test_layers_and_table_rows():
    n, rows = count("adapter.layers=[8,9,10,11]")
    assert n == 593_668 + 4 * 2 * 2 * 768 * 8
    names = [r.module for r in rows]
    assert "roberta.encoder.layer.{8-11}.attention.self.query.lora_A" in names
    assert "classifier.dense" in names


@needs_roberta
def test_full_counts_everything():
    n, _ = count("adapter.method=full")
    assert n == 124_055_040 + 593_668  # encoder without pooler + classification head


@needs_roberta
def test_over_budget_message_names_total_and_biggest():
    _, rows = count()
    with pytest.raises(BudgetError, match=r"888,580 .* exceed the budget of 500,000.*classifier.dense 590,592"):
        check_budget(rows, 500_000)
    check_budget(rows, 1_000_000)
    table = format_table(rows, 125_000_000, 1_000_000)
    assert table.splitlines()[-1] == "trainable: 888,580 / budget: 1,000,000"
    # every count with thousands separators, as in the table above it (the budget was once 1000000 beside 964,610)
    assert format_table(rows, 125_000_000, None).splitlines()[-1] == "trainable: 888,580 / budget: none"


@needs_roberta
def test_unknown_target_and_layer_out_of_range_name_what_exists():
    with pytest.raises(LorafitError, match=r"'qury'.*did you mean 'query'.*names that exist: .*value"):
        count("adapter.targets=[qury]")
    with pytest.raises(LorafitError, match=r"adapter.layers: \[12\] out of range; this model has layers 0..11"):
        count("adapter.layers=[11, 12]")


@needs_roberta
@pytest.mark.slow
def test_budget_cli_exit_codes(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{name: {ROBERTA}}}\ndata: {{label_names: [a, b, c, d]}}\nbudget: {{max_trainable: 1000000}}\n")
    run = lambda *a: run_cli("budget", "--config", cfg, *a)  # this checkout's lorafit, not an installed one
    ok = run()
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip().splitlines()[-1] == "trainable: 888,580 / budget: 1,000,000"
    over = run("--set", "adapter.r=16")
    assert over.returncode == 2
    assert over.stdout.strip().splitlines()[-1] == "trainable: 1,183,492 / budget: 1,000,000"
