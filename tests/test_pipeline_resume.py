"""A run killed with SIGKILL, then run again, ends exactly like an uninterrupted run: same
manifests, same shard members byte for byte, nothing partial left. Killed after its first finished
chunk, the rerun does the other chunk; killed inside a chunk with one of its clips final, the rerun
takes that clip back from the chunk's journal (``pipeline.spill``) and runs only the rest."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import pytest

from pipeline.build_shards import main
from pipeline.media_kit import make_clip
from tests.pipeline_kit import TEST_OVERRIDES, manifests, ray_session, shard_members, write_list  # noqa: F401
from tests.ray_processes import kill_session_processes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
KILL_DEADLINE_S = 300


def synthetic_inputs(tmp_path: Path) -> Path:
    rows = []
    for i, (fps, size) in enumerate(((25, (320, 240)), (30, (320, 320)))):
        clip = make_clip(tmp_path / "inputs" / f"video_{i}.mp4", fps=fps, size=size, duration=0.8, seed=20 + i)
        rows.append({"path": str(clip.path), "dataset": "synthetic", "language": "en", "speaker": f"s{i}"})
    return write_list(tmp_path / "inputs.csv", rows)


def job_and_reference(tmp_path: Path, videos_per_chunk: int) -> tuple[list[str], Path]:
    """The job's arguments on two synthetic videos, and the output of an uninterrupted run."""
    args = ["--input", str(synthetic_inputs(tmp_path)), "--random-weights", *TEST_OVERRIDES,
            f"work.videos_per_chunk={videos_per_chunk}"]
    reference = tmp_path / "reference"
    assert main([*args, "--output", str(reference)]) == 0
    return args, reference


def kill_when(args: list[str], out: Path, tmp_path: Path, ready: Callable[[], bool]) -> None:
    """Run the job as users do, in its own process, and SIGKILL it once ``ready()``."""
    temp_dir = tempfile.mkdtemp(prefix="thk", dir="/tmp")  # short: Ray's socket paths must be short
    log = open(tmp_path / "killed_run.log", "wb")
    proc = subprocess.Popen([sys.executable, "pipeline/build_shards.py", *args, "--output", str(out),
                             f"ray.temp_dir={temp_dir}"], cwd=REPO, start_new_session=True,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + KILL_DEADLINE_S
        while not ready():
            assert proc.poll() is None, (tmp_path / "killed_run.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the job did not get there in time"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        kill_session_processes(temp_dir)
        log.close()
    assert not (out / "manifests" / "clips.parquet").exists()


def same_as(out: Path, reference: Path) -> None:
    assert manifests(out) == manifests(reference)
    assert shard_members(out) == shard_members(reference)
    assert sum(c["kept"] for c in manifests(reference)[1]) == 2
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert not (out / "spill").exists()


def test_killed_run_resumes_to_the_uninterrupted_output(tmp_path: Path, media: Path, ray_session):  # noqa: F811
    args, reference = job_and_reference(tmp_path, videos_per_chunk=1)
    resumed = tmp_path / "resumed"
    kill_when(args, resumed, tmp_path, lambda: bool(list((resumed / "done").glob("*.json"))))
    assert len(list((resumed / "done").glob("*.json"))) < 2, "killed too late to test resuming"
    assert main([*args, "--output", str(resumed)]) == 0
    same_as(resumed, reference)


def test_a_run_killed_inside_a_chunk_keeps_its_final_clips(tmp_path: Path, media: Path, ray_session):  # noqa: F811
    args, reference = job_and_reference(tmp_path, videos_per_chunk=2)
    resumed = tmp_path / "resumed"
    finals = resumed / "spill" / "chunk-000000" / "final"
    kill_when(args, resumed, tmp_path, lambda: bool(list(finals.glob("*.pkl"))))
    assert not (resumed / "done" / "chunk-000000.json").exists(), "killed too late to test resuming"
    journaled = len(list(finals.glob("*.pkl")))
    assert main([*args, "--output", str(resumed)]) == 0
    assert json.loads((resumed / "run.json").read_text())["resumed"]["clips"] == journaled >= 1
    same_as(resumed, reference)
