"""The job submitted to a real Ray head (`ray start --head` on 127.0.0.1) with `ray job submit`.

Token authentication is disabled for this private, localhost-only head (RAY_AUTH_MODE=disabled
on both sides); docs/scale.md covers tokens for real clusters. Teardown stops exactly the
processes of this head, found by its session folder, never every Ray process on the machine.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pipeline.media_kit import make_clip
from tests.pipeline_kit import TEST_OVERRIDES, manifests, shard_members
from tests.ray_processes import kill_session_processes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head():
    """A two-CPU Ray head on 127.0.0.1 with every port chosen free; yields (job API url, GCS
    address, environment)."""
    temp_dir = tempfile.mkdtemp(prefix="thj", dir="/tmp")  # short: Ray's socket paths must be short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    dashboard, gcs = free_port(), free_port()
    cmd = [str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--node-ip-address=127.0.0.1",
           "--num-cpus", "2", "--include-dashboard=true", "--dashboard-host=127.0.0.1",
           f"--dashboard-port={dashboard}", f"--dashboard-agent-listen-port={free_port()}",
           f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
           f"--metrics-export-port={free_port()}", f"--ray-client-server-port={free_port()}",
           f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        subprocess.run(cmd, env=env, check=True, timeout=180, capture_output=True)
        yield f"http://127.0.0.1:{dashboard}", f"127.0.0.1:{gcs}", env
    finally:
        kill_session_processes(temp_dir)


def test_ray_job_submit_builds_shards(ray_head, tmp_path: Path, media: Path):
    address, gcs, env = ray_head
    clip = make_clip(tmp_path / "inputs" / "talking.mp4", fps=25, size=(320, 240), duration=0.8, seed=3)
    out = tmp_path / "out"
    submit = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO),
              "--", "python", "pipeline/build_shards.py", "--input", str(clip.path.parent),
              "--output", str(out), "--random-weights", *TEST_OVERRIDES, "ray.num_cpus=null"]
    result = subprocess.run(submit, env=env, cwd=REPO, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "succeeded" in (result.stdout + result.stderr).lower()

    videos, clips = manifests(out)
    assert [v["source"] for v in videos] == [str(clip.path)]
    kept = [c for c in clips if c["kept"]]
    assert len(kept) == 1 and list(shard_members(out)) == [f"{kept[0]['shard']}/{kept[0]['key']}"]
    run = json.loads((out / "run.json").read_text())
    assert run["cluster"]["address"] != "local" and run["random_weights"] is True
    assert run["cluster"]["resources"]["CPU"] == 2.0
    # auto sizing on the 2-CPU head with the tests' one model worker: one CPU worker sharing the
    # cores at the CPU stages' share (0.2 of 2 cores), the model worker the rest, no GPU
    assert run["cluster"]["pools"] == {"cpu_workers": 1, "cpu_worker_cpus": 0.4, "model_workers": 1,
                                       "model_worker_cpus": 1.6, "model_worker_gpus": 0.0}

    # The same run from outside the repository with --address: the driver ships the repository
    # as the job's working directory itself, and the output is the same as the submitted job's.
    direct = tmp_path / "direct"
    command = [sys.executable, str(REPO / "pipeline" / "build_shards.py"), "--address", gcs, "--input",
               str(clip.path.parent), "--output", str(direct), "--random-weights", *TEST_OVERRIDES]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=420)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert manifests(direct) == manifests(out) and shard_members(direct) == shard_members(out)
    assert json.loads((direct / "run.json").read_text())["cluster"]["address"] == gcs
