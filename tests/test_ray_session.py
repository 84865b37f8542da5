"""Without an address the job starts its own Ray; an address that does not answer fails fast.

A stale ``ray_current_cluster`` record (what a stopped ``ray start --head`` leaves behind) is
written under a private Ray temp folder (``RAY_TMPDIR``, where Ray 2.60 looks for it), so these
tests neither read nor disturb the record or the clusters of other runs on this machine. Each Ray
is started in a child process whose session lives in that folder, and only that session's
processes are stopped afterwards.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from configs.ray_session import RayAddressError, host_and_port, wait_for_cluster
from pipeline.media_kit import make_clip
from tests.pipeline_kit import TEST_OVERRIDES
from tests.ray_processes import kill_session_processes

REPO = Path(__file__).resolve().parents[1]


def dead_address() -> str:
    """host:port where nothing listens (a port just freed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def ray_tmpdir(monkeypatch):
    """A private RAY_TMPDIR (short: Ray's socket paths must be short) holding a stale record."""
    root = tempfile.mkdtemp(prefix="thr", dir="/tmp")
    stale = dead_address()
    (Path(root) / "ray").mkdir()
    (Path(root) / "ray" / "ray_current_cluster").write_text(stale)
    monkeypatch.setenv("RAY_TMPDIR", root)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    try:
        yield root, stale
    finally:
        kill_session_processes(root)
        shutil.rmtree(root, ignore_errors=True)


def child_env(**extra: str) -> dict[str, str]:
    """This environment (with the private RAY_TMPDIR) without RAY_ADDRESS, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return {**env, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(REPO), **extra}


START_AND_DESCRIBE = """
import json, time
from ray._private.services import canonicalize_bootstrap_address
from configs import load_config
from pipeline.build_shards import start_ray
recorded = canonicalize_bootstrap_address(None)  # what a bare ray.init() would join
started = time.monotonic()
start_ray(load_config("pipeline", ["ray.num_cpus=1"]))
import ray
print(json.dumps({"recorded": recorded, "gcs": ray.get_runtime_context().gcs_address,
                  "cpus": ray.cluster_resources().get("CPU"), "seconds": time.monotonic() - started}))
ray.shutdown()
"""


def test_no_address_starts_a_new_local_ray_despite_a_stale_record(ray_tmpdir):
    root, stale = ray_tmpdir
    result = subprocess.run([sys.executable, "-c", START_AND_DESCRIBE], env=child_env(), cwd=REPO,
                            capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    # The record is where Ray looks: a bare ray.init() would have joined the dead cluster.
    assert seen["recorded"] is not None and seen["recorded"].split(":")[-1] == stale.split(":")[-1]
    assert seen["gcs"].split(":")[-1] != stale.split(":")[-1]
    assert seen["cpus"] == 1.0 and seen["seconds"] < 120
    assert list((Path(root) / "ray").glob("session_*")), "the new session lives in the private temp folder"


@pytest.mark.parametrize("how", ["--address", "RAY_ADDRESS"])
def test_a_cluster_that_does_not_answer_fails_within_the_bound(ray_tmpdir, tmp_path, how):
    address = dead_address()
    clip = make_clip(tmp_path / "inputs" / "talking.mp4", fps=25, size=(160, 120), duration=0.8, seed=3)
    command = [sys.executable, str(REPO / "pipeline" / "build_shards.py"), "--input", str(clip.path.parent),
               "--output", str(tmp_path / "out"), "--random-weights", *TEST_OVERRIDES, "ray.connect_timeout_s=2"]
    if how == "--address":
        command += ["--address", address]
    env = child_env(**({"RAY_ADDRESS": address} if how == "RAY_ADDRESS" else {}))
    started = time.monotonic()
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    wall = time.monotonic() - started
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and f"no Ray cluster answers at {address}" in errors[0] and "within 2 s" in errors[0]
    assert wall < 60  # start-up of the command included; Ray's own retries take about 40 s per try


def test_training_with_a_dead_ray_address_fails_within_the_bound(ray_tmpdir, tmp_path):
    address = dead_address()
    command = [sys.executable, "-m", "training.run", "--shards", str(tmp_path), "--out", str(tmp_path / "run"),
               "--num-workers", "1", "+ray.connect_timeout_s=2"]
    result = subprocess.run(command, env=child_env(RAY_ADDRESS=address), cwd=REPO, capture_output=True,
                            text=True, timeout=240)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"error: no Ray cluster answers at {address} (RAY_ADDRESS) within 2 s" in result.stderr


def test_the_wait_is_bounded_and_a_listening_port_passes():
    address = dead_address()
    started = time.monotonic()
    with pytest.raises(RayAddressError, match=f"no Ray cluster answers at {address} \\(test\\) within 1.5 s"):
        wait_for_cluster(address, 1.5, "test")
    assert 1.0 < time.monotonic() - started < 3.0
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        started = time.monotonic()
        wait_for_cluster(f"ray://127.0.0.1:{server.getsockname()[1]}", 5, "test")
        assert time.monotonic() - started < 1.0


def test_addresses_are_parsed():
    """host:port, ray://host:port and [v6]:port; anything else is one clear error. ("auto" is
    resolved by Ray itself, from RAY_ADDRESS, the record or a GCS process it finds running, so on a
    shared machine it may name someone else's cluster: not tested here.)"""
    assert host_and_port("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert host_and_port("ray://head.example:10001") == ("head.example", 10001)
    assert host_and_port("[::1]:6379") == ("::1", 6379)
    for bad in ("head-without-port", "host:port", ":6379"):
        with pytest.raises(RayAddressError, match="not host:port"):
            host_and_port(bad)
