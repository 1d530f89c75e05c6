"""No code from a model, a checkpoint or a data file runs unless the user opted in: remote code only
with model.trust_remote_code, torch.load only with weights_only=True, weights in safetensors,
pickled data only with --allow-pickle. Checked in the source and by behaviour (planted payloads
that would create a marker file if they ever ran)."""
from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path


from conftest import tiny_config
from lorafit.cli import main

SRC = Path(__file__).resolve().parents[1] / "src" / "lorafit"


def calls(name: str):
    """(file, call node) for every call whose dotted name ends with `name` in the package source."""
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                f = node.func
                dotted = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
                if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                    dotted = f"{f.value.id}.{f.attr}"
                if dotted == name or dotted.endswith("." + name.split(".")[-1]) and "." not in name:
                    yield path.relative_to(SRC), node


def kwarg(node: ast.Call, key: str):
    return next((k.value for k in node.keywords if k.arg == key), None)


def test_source_torch_load_only_with_weights_only():
    found = list(calls("torch.load"))
    assert found, "expected the checkpoint loader"
    for path, node in found:
        v = kwarg(node, "weights_only")
        assert isinstance(v, ast.Constant) and v.value is True, f"{path}:{node.lineno} torch.load without weights_only=True"


def test_source_trust_remote_code_only_from_config():
    n = 0
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.keyword) and node.arg == "trust_remote_code":
                n += 1
                assert ast.unparse(node.value) == "cfg.trust_remote_code", f"{path}:{node.value.lineno}"
    assert n >= 3  # tokenizer, config, model all pass the user's setting explicitly


def test_source_writes_safetensors_and_unpickles_only_on_opt_in():
    for path, node in calls("save_pretrained"):
        if "tokenizer" in ast.unparse(node.func):
            continue
        v = kwarg(node, "safe_serialization")
        assert isinstance(v, ast.Constant) and v.value is True, f"{path}:{node.lineno}"
    unpickles = [(p, n.lineno) for name in ("pickle.load", "pickle.loads") for p, n in calls(name)]
    # data/tables.py: _read_pickle, behind allow_pickle (tested below). bulk/ray_stream.py: chunks this job's own
    # read task pickled, passed between its own Ray workers (Ray pickles every object it moves anyway); no
    # user file is unpickled there
    assert sorted({str(p) for p, _ in unpickles}) == ["bulk/ray_stream.py", "data/tables.py"]
    for path, node in calls("np.load"):
        v = kwarg(node, "allow_pickle")
        assert isinstance(v, ast.Constant) and v.value is False, f"{path}:{node.lineno}"
    saves = {str(p) for p, _ in calls("torch.save")}
    assert saves <= {"train/checkpoint.py"}  # optimizer/scheduler state only, read back with weights_only=True


class Payload:
    """Unpickling this creates `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_remote_code_in_a_model_folder_never_runs(tiny_roberta, synth_csv, tmp_path, capsys):
    marker = tmp_path / "REMOTE_CODE_RAN"
    folder = tmp_path / "evil-model"
    shutil.copytree(tiny_roberta, folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(model_type="evil", auto_map={"AutoConfig": "evil.EvilConfig",
                                            "AutoModelForSequenceClassification": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').close()\n"
                                    "from transformers import RobertaConfig as EvilConfig, RobertaModel as EvilModel\n")
    conf = tmp_path / "c.yaml"
    conf.write_text(tiny_config(folder, synth_csv).to_yaml())
    assert main(["train", "--config", str(conf), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: model.name: could not load") and err.count("\n") == 1, err
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_pickled_weights_refused_and_never_unpickled(tiny_roberta, synth_csv, tmp_path, capsys):
    import torch

    marker = tmp_path / "PICKLE_RAN"
    folder = tmp_path / "bin-model"
    shutil.copytree(tiny_roberta, folder)
    (folder / "model.safetensors").unlink()
    torch.save({"roberta.embeddings.word_embeddings.weight": Payload(marker)}, folder / "pytorch_model.bin")
    for extra, expect in (([], "has only pickled weights (pytorch_model.bin)"),
                          (["--set", "model.allow_pickle_weights=true"], "could not load the model")):
        conf = tmp_path / "c.yaml"
        conf.write_text(tiny_config(folder, synth_csv).to_yaml())
        assert main(["train", "--config", str(conf), "--out", str(tmp_path / "run"), *extra]) == 2
        err = capsys.readouterr().err
        assert expect in err and err.count("\n") == 1, err
        assert not marker.exists() and not (tmp_path / "run").exists()


def test_pickled_data_needs_opt_in(synth_csv, tiny_roberta, tmp_path, capsys):
    marker = tmp_path / "DATA_PICKLE_RAN"
    data = tmp_path / "data.pkl"
    data.write_bytes(pickle.dumps(Payload(marker)))
    conf = tmp_path / "c.yaml"
    conf.write_text(tiny_config(tiny_roberta, synth_csv, data__train=data).to_yaml())
    assert main(["train", "--config", str(conf), "--out", str(tmp_path / "run")]) == 2
    assert "pickle files can run arbitrary code" in capsys.readouterr().err
    assert not marker.exists()


def test_tampered_checkpoint_is_refused_not_executed(tiny_roberta, synth_csv, tmp_path, capsys):
    """A resume checkpoint whose optimizer.pt was replaced by a pickle payload: refused, nothing runs."""
    import torch

    from lorafit.train import checkpoint
    from lorafit.train.recipe import Recipe

    run = tmp_path / "run"
    Recipe(tiny_config(tiny_roberta, synth_csv, data__limit=100, train__max_steps=2), run, log=lambda *a: None).setup().train()
    folder = checkpoint.latest(run)
    assert folder is not None
    marker = tmp_path / "CHECKPOINT_PICKLE_RAN"
    torch.save({"state": Payload(marker)}, folder / "optimizer.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optimizer.pt: not a readable checkpoint file: it holds Python objects" in err, err
    assert not marker.exists()
