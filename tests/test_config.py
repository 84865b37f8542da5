"""YAML defaults, command-line overrides and the saved effective config."""
import pytest
from omegaconf import OmegaConf

from configs import CONFIG_DIR, load_config, save_config


def test_every_default_config_loads():
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert {"pipeline", "train"} <= set(names)
    for name in names:
        assert len(load_config(name)) > 0


def test_overrides_apply_and_unknown_keys_fail(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("a: 1\nb:\n  c: x\n")
    cfg = load_config(path, ["a=5", "b.c=y", "+b.d=[1,2]"])
    assert cfg.a == 5 and cfg.b.c == "y" and list(cfg.b.d) == [1, 2]
    with pytest.raises(KeyError, match="b.typo"):
        load_config(path, ["b.typo=1"])
    with pytest.raises(ValueError, match="key=value"):
        load_config(path, ["a"])
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "missing.yaml")


def test_save_config_round_trips(tmp_path):
    cfg = load_config("pipeline", [])
    save_config(cfg, tmp_path / "run" / "config.yaml")
    assert OmegaConf.load(tmp_path / "run" / "config.yaml") == cfg
    assert not list((tmp_path / "run").glob("*.tmp"))
