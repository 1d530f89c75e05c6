"""Every subcommand's stderr, line by line, in a real process (libraries imported, as a user runs them):
`--help` writes nothing there; a missing input writes exactly one `error:` line. A dependency that
starts printing on import (bitsandbytes' hub kernel, optuna's experimental notes) fails here."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import run_cli
from lorafit.cli import COMMANDS


def config_only_model(folder):
    """config.json alone, which is all `budget` reads: a local model that costs nothing to make."""
    from transformers import RobertaConfig

    folder.mkdir(parents=True)
    RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=64,
                  max_position_embeddings=80).to_json_file(folder / "config.json")
    return folder


def error_cases(tmp) -> dict[str, tuple[list, str]]:
    """Per subcommand: arguments naming a missing file or run, and the path its error line must name."""
    config, run, data = tmp / "missing.yaml", tmp / "missing-run", tmp / "missing.csv"
    return {
        "train": (["train", "--config", config], str(config)),
        "budget": (["budget", "--config", config], str(config)),
        "sweep": (["sweep", "--config", config, "--trials", "1"], str(config)),
        "evaluate": (["evaluate", run, "--data", data], str(run)),
        "predict": (["predict", run, "--input", data, "--output", tmp / "out.csv"], str(run)),
        "serve": (["serve", run, "--port", "0"], str(run)),
        "export": (["export", run, "--format", "merged", "--out", tmp / "export"], str(run)),
    }


def test_every_subcommand_is_covered(tmp_path):
    assert sorted(error_cases(tmp_path)) == sorted(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_writes_nothing_to_stderr(command):
    proc = run_cli(command, "--help", timeout=120)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr[-2000:]
    assert proc.stdout.startswith(f"usage: lorafit {command}")


@pytest.mark.slow
def test_a_missing_input_is_exactly_one_error_line(tmp_path):
    """All at once (each imports libraries before it finds the file missing: seconds each). Most stop
    before peft is imported, so `budget` also fails late, after counting with PEFT (bitsandbytes loads)."""
    work = tmp_path / "work"
    work.mkdir()
    cases = error_cases(work)
    model = config_only_model(tmp_path / "model")
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {{name: {model}}}\nadapter: {{targets: [qkv]}}\n")
    cases["budget after peft"] = (["budget", "--config", config, "--num-labels", "4"], "adapter.targets: 'qkv'")
    with ThreadPoolExecutor(max_workers=len(cases)) as pool:
        procs = dict(zip(cases, pool.map(lambda argv: run_cli(*argv, timeout=300), (a for a, _ in cases.values()))))
    for command, proc in procs.items():
        lines = proc.stderr.split("\n")
        assert proc.returncode == 2 and len(lines) == 2 and lines[1] == "", (command, lines)
        assert lines[0].startswith("error: ") and cases[command][1] in lines[0], (command, lines)
        assert proc.stdout == "", (command, proc.stdout[-500:])
    assert not any(work.iterdir())  # nothing written
