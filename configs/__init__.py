"""YAML configuration with command-line overrides, and the effective config saved with outputs.

Defaults live in this package as ``configs/*.yaml``, so an installed wheel carries them. Any key can be overridden from the
command line in dotted form (``filters.sync.min_conf=5``); OmegaConf does the parsing and merging.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent  # the YAML defaults ship inside this package


def load_config(name_or_path: str | Path, overrides: Iterable[str] = ()) -> DictConfig:
    """Load ``configs/<name>.yaml`` (or a path) and apply ``key=value`` overrides."""
    path = Path(name_or_path)
    if not path.suffix:
        path = CONFIG_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    cfg = OmegaConf.load(path)
    overrides = list(overrides)
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ValueError(f"overrides must look like key=value, got: {bad}")
        unknown = [o.split("=", 1)[0] for o in overrides
                   if OmegaConf.select(cfg, o.split("=", 1)[0].lstrip("+"), default="__missing__") == "__missing__"
                   and not o.startswith("+")]
        if unknown:
            raise KeyError(f"unknown config keys {unknown} (prefix a key with + to add a new one)")
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([o.lstrip("+") for o in overrides]))
    return cfg


def to_dict(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]


def save_config(cfg: DictConfig, path: str | Path) -> None:
    """Write the effective config as YAML, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    tmp.replace(path)
