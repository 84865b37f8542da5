"""Shared test fixtures: the real media folder and a per-session folder of synthesised media."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.media import ENV_VAR, media_available, media_dir


@pytest.fixture(scope="session")
def media() -> Path:
    """The real sample media; skips when absent, fails under CI=true."""
    if not media_available():
        msg = f"real media not found at {media_dir()} (set {ENV_VAR})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI=true requires it")
        pytest.skip(msg)
    return media_dir()


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    """Two intra-op threads for every test: the size of the machines this suite runs on, and no
    oversubscription when Ray workers or loader processes run beside the test process."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(previous)
