"""The config tree: YAML + key=value overrides, errors that name the key, every shipped config loads."""
from pathlib import Path

import pytest

from timematters.config import CONFIG_DIR, ConfigError, load_config, parse_override, save_config


def test_overrides_and_types(tmp_path):
    cfg = load_config("synth_time", ["optim.lr=3e-4", "data.scale=[40, 48]", "objective.weights={flow: 0}",
                                     "model.extra={qkv_bias: false}", "run.deterministic=true"])
    assert cfg.optim.lr == 3e-4 and cfg.data.scale == (40, 48)
    assert cfg.objective.weights == {"order": 1.0, "debias": 1.0, "flow": 0}
    assert cfg.model.extra == {"qkv_bias": False} and cfg.run.deterministic is True
    save_config(cfg, tmp_path / "c.yaml")
    again = load_config(tmp_path / "c.yaml")
    assert again == cfg


@pytest.mark.parametrize("override,match", [
    ("optim.lrr=1", "optim.lrr"),
    ("optim.epochs=ten", "optim.epochs"),
    ("data.scale=[1, 2, 3]", "data.scale"),
    ("run.deterministic=3", "run.deterministic"),
    ("nokey", "key=value"),
])
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override])


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  warmup: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*optim.warmup"):
        load_config(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_config("no_such_config")


def test_parse_override_nests():
    assert parse_override("a.b.c=[1, 2]") == {"a": {"b": {"c": "[1, 2]"}}}  # read by the key's type on merge


def test_override_values_work_as_written():
    """A string-typed key takes the text as given; other keys read it as YAML."""
    cfg = load_config("synth_time", ["optim.amp=off", "data.root=2024", "data.randaugment=rand-m9-n2",
                                     "optim.lr=3e-4", "run.deterministic=true", "data.scale=[40, 48]",
                                     "model.extra.foo=3", "objective.weights={order: 2}", "flow.threshold=1.5",
                                     "optim={epochs: 3}"])
    assert cfg.optim.amp == "off" and cfg.data.root == "2024" and cfg.data.randaugment == "rand-m9-n2"
    assert cfg.optim.lr == 3e-4 and cfg.run.deterministic is True and cfg.data.scale == (40, 48)
    assert cfg.model.extra["foo"] == 3 and cfg.objective.weights["order"] == 2 and cfg.flow.threshold == 1.5
    assert cfg.optim.epochs == 3
    for amp in ("auto", "off", "bf16", "fp16"):  # the README's documented values
        assert load_config(None, [f"optim.amp={amp}"]).optim.amp == amp
    with pytest.raises(ConfigError, match="run.deterministic"):
        load_config(None, ["run.deterministic=maybe"])


def test_yaml_boolean_for_a_text_key_says_to_quote(tmp_path):
    (tmp_path / "c.yaml").write_text("optim:\n  amp: off\n")
    with pytest.raises(ConfigError, match="quote"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: Path(p).stem)
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert cfg.optim.epochs > 0 and cfg.model.name
