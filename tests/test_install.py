"""The project works from a regular (non-editable) install: every console script and the YAML defaults.

The package is built and installed into a fresh folder with this interpreter's dependencies
(``pip install --no-deps --target``), and everything runs from a directory outside the
repository, so nothing can come from the source tree: a package left out of ``pyproject.toml``
or a YAML default not shipped as package data fails here.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
SCRIPTS = sorted(PYPROJECT["project"]["scripts"])
PACKAGES = ("configs", "shards", "models", "filters", "manifests", "training", "pipeline")


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A non-editable install of a copy of the project's sources; returns the target folder."""
    source, target = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("site")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for package in PACKAGES:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-compile", "--target", str(target), str(source)], check=True, timeout=300,
                   capture_output=True)
    return target


def run_installed(target: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target)}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_packages_and_yaml_defaults_come_from_the_install(installed, tmp_path):
    code = ("import configs, pipeline, training, models, filters, manifests, shards\n"
            "from configs import load_config\n"
            "assert all(m.__file__.startswith(%r) for m in (configs, pipeline, training, models, filters, "
            "manifests, shards)), [m.__file__ for m in (configs, pipeline)]\n"
            "print(load_config('pipeline').ray.cpu_workers, load_config('train').model.layers)\n" % str(installed))
    result = run_installed(installed, [sys.executable, "-c", code], tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["auto", "6"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_console_script_answers_help(installed, tmp_path, script):
    result = run_installed(installed, [str(installed / "bin" / script), "--help"], tmp_path)
    assert result.returncode == 0, f"{script} --help failed:\n{result.stderr[-2000:]}"
    assert "usage:" in result.stdout.lower()
