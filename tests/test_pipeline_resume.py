"""A run killed with SIGKILL after its first finished chunk, then run again, ends exactly like an
uninterrupted run: same manifests, same shard members byte for byte, nothing partial left."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from pipeline.build_shards import main
from pipeline.media_kit import make_clip
from tests.pipeline_kit import TEST_OVERRIDES, manifests, ray_session, shard_members, write_list  # noqa: F401
from tests.ray_processes import kill_session_processes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
KILL_DEADLINE_S = 300


def test_killed_run_resumes_to_the_uninterrupted_output(tmp_path: Path, media: Path, ray_session):  # noqa: F811
    rows = []
    for i, (fps, size) in enumerate(((25, (320, 240)), (30, (320, 320)))):
        clip = make_clip(tmp_path / "inputs" / f"video_{i}.mp4", fps=fps, size=size, duration=0.8, seed=20 + i)
        rows.append({"path": str(clip.path), "dataset": "synthetic", "language": "en", "speaker": f"s{i}"})
    spec = write_list(tmp_path / "inputs.csv", rows)
    args = ["--input", str(spec), "--random-weights", *TEST_OVERRIDES, "work.videos_per_chunk=1"]

    reference = tmp_path / "reference"
    assert main([*args, "--output", str(reference)]) == 0

    resumed = tmp_path / "resumed"
    temp_dir = tempfile.mkdtemp(prefix="thk", dir="/tmp")  # short: Ray's socket paths must be short
    log = open(tmp_path / "killed_run.log", "wb")
    proc = subprocess.Popen([sys.executable, "pipeline/build_shards.py", *args, "--output", str(resumed),
                             f"ray.temp_dir={temp_dir}"], cwd=REPO, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + KILL_DEADLINE_S
        while not list((resumed / "done").glob("*.json")):
            assert proc.poll() is None, (tmp_path / "killed_run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no chunk finished in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        kill_session_processes(temp_dir)
        log.close()
    assert len(list((resumed / "done").glob("*.json"))) < len(rows), "killed too late to test resuming"
    assert not (resumed / "manifests" / "clips.parquet").exists()

    assert main([*args, "--output", str(resumed)]) == 0
    assert manifests(resumed) == manifests(reference)
    assert shard_members(resumed) == shard_members(reference)
    assert sum(c["kept"] for c in manifests(reference)[1]) == len(rows)
    leftovers = [p for p in resumed.rglob("*") if p.name.endswith(".tmp")]
    assert not leftovers
