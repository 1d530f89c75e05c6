import re

import pytest
import yaml

from lorafit.config import RunConfig, load_config
from lorafit.errors import LorafitError

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_defaults_point_at_hub():
    cfg = RunConfig()
    assert cfg.model.name == "roberta-base" and cfg.data.train == "ag_news"
    assert cfg.model.trust_remote_code is False


def test_unknown_key_did_you_mean(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr_rate: 0.1\n")
    with pytest.raises(LorafitError, match=r"unknown key 'optim.lr_rate' \(did you mean 'optim.lr'\?\)"):
        load_config(p)


def test_unknown_section_and_several_errors_in_one_message(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("adaptr: {r: 4}\ntrain: {epochs: -1}\n")
    with pytest.raises(LorafitError) as e:
        load_config(p)
    msg = str(e.value)
    assert "'adaptr'" in msg and "did you mean 'adapter'" in msg and "train.epochs" in msg
    assert "\n" not in msg


def test_dotted_overrides_parse_yaml_values():
    cfg = load_config(None, ["adapter.r=4", "optim.lr=3e-4", "adapter.targets=[query, value]", "data.limit=null"])
    assert cfg.adapter.r == 4 and cfg.optim.lr == 3e-4 and cfg.adapter.targets == ["query", "value"]
    assert cfg.data.limit is None


def test_a_single_name_is_a_list_of_one(tmp_path):
    """`--set data.text_columns=review` was refused: one column (target, layer, tracker, tier) is a list of one."""
    cfg = load_config(None, ["data.text_columns=review", "adapter.targets=query", "adapter.layers=11",
                             "train.report_to=tensorboard", "optim.layer_lrs={layers: [0, 3], lr: 1.0e-5}"])
    assert cfg.data.text_columns == ["review"] and cfg.adapter.targets == ["query"] and cfg.adapter.layers == [11]
    assert cfg.train.report_to == ["tensorboard"] and cfg.optim.layer_lrs[0].layers == [0, 3]
    p = tmp_path / "c.yaml"
    p.write_text("data: {text_columns: title}\n")
    assert load_config(p).data.text_columns == ["title"]
    assert yaml.safe_load(load_config(p).to_yaml())["data"]["text_columns"] == ["title"]  # config.yaml: the list
    # where one item is not a whole setting, a scalar is still refused with the list form
    with pytest.raises(LorafitError, match=re.escape("--set data.label_names: Input should be a valid list (write a "
                                                     "list: --set data.label_names=[World])")):
        load_config(None, ["data.label_names=World"])


def test_step_schedule_settings_are_checked():
    cfg = load_config(None, ["optim.schedule=step"]).optim
    assert cfg.step_size == "epoch" and cfg.step_factor == 0.1
    assert load_config(None, ["optim.schedule=step", "optim.step_size=30"]).optim.step_size == 30
    for value, msg in (("0", "--set optim.step_size: 0: must be 'epoch' or a positive number of optimizer steps"),
                       ("epochs", "--set optim.step_size: 'epochs': must be 'epoch' or a positive number of optimizer steps"),
                       ("2.5", "--set optim.step_size: 2.5: must be 'epoch' or a positive number of optimizer steps")):
        with pytest.raises(LorafitError) as e:
            load_config(None, ["optim.schedule=step", f"optim.step_size={value}"])
        assert str(e.value) == msg
    with pytest.raises(LorafitError, match=r"optim.step_factor: Input should be less than or equal to 1"):
        load_config(None, ["optim.step_factor=2"])


def test_bad_override_and_bad_yaml(tmp_path):
    with pytest.raises(LorafitError, match="expected key=value"):
        load_config(None, ["adapter.r"])
    p = tmp_path / "c.yaml"
    p.write_text("model: [unclosed\n")
    with pytest.raises(LorafitError, match="not valid YAML"):
        load_config(p)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["adapter.r=2", "optim.layer_lrs=[{layers: [0, 3], lr: 1e-5}]", "train.eval_every=50"])
    p = tmp_path / "config.yaml"
    p.write_text(cfg.to_yaml())
    again = load_config(p)
    assert again == cfg


def test_cross_field_checks():
    with pytest.raises(LorafitError, match="target_r"):
        load_config(None, ["adapter.method=adalora", "adapter.adalora.init_r=4", "adapter.adalora.target_r=8"])
    with pytest.raises(LorafitError, match="whole number"):
        load_config(None, ["data.val_size=10.5"])


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_validates(path):
    cfg = load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("#") and "lorafit" in first, "configs begin with the command that runs them"
    assert isinstance(yaml.safe_load(path.read_text()), dict) and cfg is not None


def test_moved_keys_are_read_at_their_old_place_with_one_line_each():
    lines = []
    cfg = load_config(None, ["train.cache_prefix=false", "adapter.init_r=4", "adapter.method=adalora",
                             "adapter.target_r=2"], warn=lines.append)
    assert cfg.speed.cache_prefix is False and (cfg.adapter.adalora.init_r, cfg.adapter.adalora.target_r) == (4, 2)
    assert lines == ["config: train.cache_prefix is deprecated; write speed.cache_prefix (read as speed.cache_prefix this time)",
                     "config: adapter.init_r is deprecated; write adapter.adalora.init_r (read as adapter.adalora.init_r this time)",
                     "config: adapter.target_r is deprecated; write adapter.adalora.target_r (read as adapter.adalora.target_r this time)"]
    # the recorded config has only the new keys, and reads back silently to the same settings
    again = load_config(None, [], warn=lines.append)
    assert "cache_prefix" not in RunConfig().model_dump()["train"] and len(lines) == 3 and again.speed.cache_prefix == "auto"
    with pytest.raises(LorafitError, match="both set; keep speed.compile only"):
        load_config(None, ["train.compile=true", "speed.compile=false"], warn=None)


def test_speed_switches_all_default_to_auto_and_resolve_to_their_old_defaults():
    speed = RunConfig().speed
    assert set(speed.model_dump().values()) == {"auto"}
    assert speed.resolved("group_by_length") is True and speed.resolved("compile") is False
    assert speed.resolved("cache_dtype") == "float32" and speed.resolved("cache_prefix") == "auto"


def test_config_modules_stay_small():
    from pathlib import Path

    import lorafit.config as pkg

    sizes = {p.name: len(p.read_text().splitlines()) for p in Path(pkg.__file__).parent.glob("*.py")}
    assert max(sizes.values()) < 400, sizes


def test_a_config_for_a_new_task_needs_at_most_ten_keys_and_shipped_configs_use_no_moved_key():
    def leaves(node):
        return sum(leaves(v) if isinstance(v, dict) else 1 for v in node.values())

    assert leaves(yaml.safe_load((ROOT / "configs" / "new-task.yaml").read_text())) <= 10
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        lines = []
        load_config(path, warn=lines.append)
        assert lines == [], (path.name, lines)
