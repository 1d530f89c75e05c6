"""The package layout (issue 14): no module imports another that imports it back, counting every
import (lazy ones inside functions too) and what importing a submodule runs first (its package's
__init__); the speed switches keep their contract; every module imports."""
from __future__ import annotations

import ast
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PKG = SRC / "lorafit"


def _modules() -> dict[str, Path]:
    out = {}
    for p in PKG.rglob("*.py"):
        rel = p.relative_to(SRC).with_suffix("")
        out[".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)] = p
    return out


def import_graph() -> dict[str, set[str]]:
    """module -> the lorafit modules importing it runs: what it names (a module, or the module a name
    comes from) and each package above that which the importer is not itself inside."""
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_pkg = path.name == "__init__.py"
        here = name.split(".") if is_pkg else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else (node.module or "")
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for t in targets:
                parts = t.split(".")
                for k in range(1, len(parts) + 1):
                    above = ".".join(parts[:k])
                    inside = name == above or name.startswith(above + ".")
                    if above in mods and above != name and (k == len(parts) or not inside):
                        deps.add(above)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]; counter[0] += 1; stack.append(root); on.add(root)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = counter[0]; counter[0] += 1; stack.append(w); on.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    x = stack.pop(); on.discard(x); comp.append(x)
                    if x == v:
                        break
                if len(comp) > 1:
                    out.append(sorted(comp))
    return out


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_cycle_check_finds_a_cycle_through_a_package_init(tmp_path):
    """The checker itself: a.x imports b.y, and b's __init__ imports b.z, which imports a.x back."""
    g = {"p.a": set(), "p.a.x": {"p.b", "p.b.y"}, "p.b": {"p.b.z"}, "p.b.y": set(), "p.b.z": {"p.a", "p.a.x"}}
    assert cycles(g) == [["p.a.x", "p.b", "p.b.z"]]
    assert cycles({"p.a": {"p.b"}, "p.b": set()}) == []


def test_io_is_the_bottom():
    """io.py (atomic writes, fsync, umask) imports nothing of lorafit but errors: every layer may use it."""
    assert import_graph()["lorafit.io"] <= {"lorafit.errors"}


SPEED = ["prefix", "dropout", "first_token", "packed", "memory"]


def contract_rows() -> dict[str, list[str]]:
    """speed/__init__.py's table: module -> the names in its `install / remove` column."""
    doc = importlib.import_module("lorafit.speed").__doc__
    rows = [line.split("|")[1:-1] for line in doc.splitlines() if line.startswith("| ") and line.count("|") == 4]
    return {cells[0].strip(): re.findall(r"`([\w.]+)`", cells[2]) for cells in rows if cells[0].strip() != "module"}


def tiny_classifier():
    """A 2-layer RoBERTa classifier from a config (no weights read) with only its head trainable."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    model = RobertaForSequenceClassification(RobertaConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=64,
        max_position_embeddings=80, attn_implementation="sdpa"))
    for n, p in model.named_parameters():
        p.requires_grad = n.startswith("classifier.")
    return model


def why_off_cases(name: str) -> tuple[list, list]:
    """(calls why_off must answer None: the switch applies, calls it must answer with a reason), each
    (model, Where)."""
    import platform

    import torch

    from lorafit.config import load_config
    from lorafit.speed import Where

    def cfg(*sets):
        return load_config(None, ["model.name=roberta-base", "data.train=ag_news", *sets])

    if name == "dropout":
        return [(tiny_classifier(), Where("cpu"))], [(tiny_classifier(), Where("cuda"))]
    if name == "packed":
        on = [(tiny_classifier(), Where("cpu"))] if platform.machine().lower() in ("x86_64", "amd64") else []
        return on, [(tiny_classifier(), Where("cpu", dtype=torch.bfloat16)), (tiny_classifier(), Where(torch.device("cuda")))]
    if name == "first_token":
        return [(tiny_classifier(), Where("cpu", cfg("head.type=cls_linear"))), (tiny_classifier(), Where("cpu"))], \
            [(tiny_classifier(), Where("cpu", cfg("head.type=mean_linear"))), (torch.nn.Linear(2, 2), Where("cpu"))]
    if name == "prefix":
        every_layer_trains = tiny_classifier().requires_grad_(True)
        return [(tiny_classifier(), Where("cpu", cfg()))], [(tiny_classifier(), Where("cpu", cfg("speed.cache_prefix=false"))),
                                                            (tiny_classifier(), Where("cpu", cfg("data.shuffle_sentences_p=0.1"))),
                                                            (every_layer_trains, Where("cpu", cfg())),
                                                            (tiny_classifier(), Where("cpu"))]
    if name == "memory":  # glibc has malloc_trim; nothing here can take it away
        return ([(tiny_classifier(), Where("cpu", cfg()))] if platform.libc_ver()[0] == "glibc" else []), []
    raise AssertionError(f"lorafit.speed.{name}: add its why_off cases here")


@pytest.mark.parametrize("name", SPEED)
def test_each_speed_switch_says_why_it_is_off_and_can_be_installed(name):
    """why_off answers None where the switch applies and a reason (a run-log line) where it does not;
    the contract table names the one install / remove pair; lorafit.speed.apply installs it where it
    applies (install says what changed), remove takes it out, and apply changes nothing where it is off."""
    from lorafit.speed import apply

    mod = importlib.import_module(f"lorafit.speed.{name}")
    on, off = why_off_cases(name)
    for model, where in on:
        assert mod.why_off(model, where) is None, (where, mod.why_off(model, where))
    for model, where in off:
        reason = mod.why_off(model, where)
        assert isinstance(reason, str) and len(reason) > 10, (where, reason)
    assert len({mod.why_off(*args) for args in off}) == len(off)  # each reason names its own cause
    assert contract_rows()[name] == ["install", "remove"], contract_rows()[name]
    for model, where in on:
        state = {k: v.clone() for k, v in model.state_dict().items()}
        what = mod.install(model, where)
        assert isinstance(what, str) and what, what
        assert mod.remove(model) is None
        assert apply(mod, model, where) is None
        mod.remove(model)
        assert model.state_dict().keys() == state.keys()  # nothing saved changes
    for model, where in off:
        before = {id(m): vars(m).copy() for m in model.modules()}
        assert apply(mod, model, where) == mod.why_off(model, where)
        assert {id(m): vars(m) for m in model.modules()} == before, "apply changed a model it is off for"


def _shape(fn) -> list[tuple]:
    return [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]


@pytest.mark.parametrize("name", SPEED)
def test_every_speed_switch_has_the_one_signature(name):
    """why_off(model, where), install(model, where), remove(model): one contract, no per-switch variants
    (lorafit.speed.apply calls them all alike); model.nf4's check (not a speed switch) has why_off's too."""
    from lorafit.model import nf4
    from lorafit.speed import apply

    mod = importlib.import_module(f"lorafit.speed.{name}")
    two = _shape(lambda model, where: None)
    assert _shape(mod.why_off) == two, inspect.signature(mod.why_off)
    assert _shape(mod.install) == two, inspect.signature(mod.install)
    assert _shape(mod.remove) == _shape(lambda model: None), inspect.signature(mod.remove)
    assert _shape(nf4.why_off) == two and _shape(apply) == _shape(lambda switch, model, where: None)
    assert not hasattr(mod, "apply") or mod.apply is apply, f"lorafit.speed.{name}.apply: use lorafit.speed.apply"


def test_every_speed_module_is_listed_in_the_contract():
    """A new switch joins the table in speed/__init__.py (and this test's list)."""
    found = sorted(p.stem for p in (PKG / "speed").glob("*.py") if p.stem != "__init__")
    assert found == sorted(SPEED)
    doc = importlib.import_module("lorafit.speed").__doc__
    assert all(f"| {n} |" in doc for n in SPEED)


@pytest.mark.slow
def test_every_module_imports():
    """Every module, imported in a fresh interpreter (a rarely used one breaks here, not in a user's hands)."""
    names = sorted(n for n in _modules() if n != "lorafit.__main__")
    code = "import importlib, sys\nfor n in sys.argv[1:]:\n    importlib.import_module(n)\n"
    proc = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-1500:]
