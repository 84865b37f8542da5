"""Node loss on a real two-node Ray cluster: the job's output equals an uninterrupted run.

A head (``ray start --head``) and a second node (``ray start --address``) run on this machine with
one CPU each, so the default sizing places a model actor and a CPU actor on each. The job joins
with ``--address``; once its first shard exists, the second node's raylet is killed with SIGKILL.
Its actors cannot restart (the head has no room), the crops and finished clips in its object
store are gone: the job must prepare those clips again on the head, reject nothing for it, and end
(or, with exit status 3, a rerun end) with the manifests and shards of an uninterrupted run.

Token authentication is disabled for this private, localhost-only cluster (RAY_AUTH_MODE=disabled
on both nodes and the driver). Teardown stops exactly the processes of this cluster, found by its
session folder, never every Ray process on the machine.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pipeline.build_shards import main
from pipeline.incomplete import EXIT_INCOMPLETE
from pipeline.media_kit import make_clip
from tests.pipeline_kit import TEST_OVERRIDES, manifests, ray_session, shard_members, write_list  # noqa: F401
from tests.ray_processes import kill_session_processes
from tests.test_ray_job import BIN, free_port

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180
JOB_TIMEOUT_S = 900
VIDEOS = 4


def node_ports() -> list[str]:
    return [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]


def raylet_pid(temp_dir: str, node_manager_port: str) -> int:
    """The raylet of the node started with ``--node-manager-port=N`` (its command line names the
    port as ``--node_manager_port=N`` and its sockets under ``temp_dir``)."""
    wanted = "--node_manager_port=" + node_manager_port.split("=", 1)[1]
    for proc in psutil.process_iter(["pid", "name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "raylet" and wanted in cmdline and any(temp_dir in part for part in cmdline):
            return proc.info["pid"]
    raise LookupError(f"no raylet with {wanted} in {temp_dir}")


@pytest.fixture
def two_nodes():
    """A 1-CPU head and a 1-CPU second node on 127.0.0.1; yields (GCS address, environment,
    session folder, the second node's ``--node-manager-port=N`` argument)."""
    temp_dir = tempfile.mkdtemp(prefix="thn", dir="/tmp")  # short: Ray's socket paths must be short
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    gcs = f"127.0.0.1:{free_port()}"
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--object-store-memory=300000000",
              "--disable-usage-stats"]
    head = [str(BIN / "ray"), "start", "--head", f"--port={gcs.split(':')[1]}", *common, *node_ports(),
            "--include-dashboard=false", f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}"]
    second_ports = node_ports()
    second = [str(BIN / "ray"), "start", f"--address={gcs}", *common, *second_ports]
    try:
        subprocess.run(head, env=env, check=True, timeout=START_TIMEOUT_S, capture_output=True)
        subprocess.run(second, env=env, check=True, timeout=START_TIMEOUT_S, capture_output=True)
        yield gcs, env, temp_dir, second_ports[0]
    finally:
        kill_session_processes(temp_dir)


def inputs(folder: Path) -> Path:
    rows = []
    for i in range(VIDEOS):
        clip = make_clip(folder / f"video_{i}.mp4", fps=25, size=(320, 240), duration=0.8, seed=60 + i)
        rows.append({"path": str(clip.path), "dataset": "synthetic", "language": "en", "speaker": f"s{i}"})
    return write_list(folder / "inputs.csv", rows)


def test_killing_a_node_loses_nothing(two_nodes, tmp_path, ray_session):  # noqa: F811
    gcs, env, temp_dir, second_port = two_nodes
    spec = inputs(tmp_path / "inputs")
    args = ["--input", str(spec), "--random-weights", *TEST_OVERRIDES, "work.videos_per_chunk=1",
            "ray.model_workers=auto", "ray.retry_backoff_s=0.5", "ray.placement_timeout_s=120"]

    reference = tmp_path / "reference"  # uninterrupted, on the tests' local Ray
    assert main([*args, "--output", str(reference)]) == 0
    assert sum(c["kept"] for c in manifests(reference)[1]) == VIDEOS

    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "pipeline" / "build_shards.py"), "--address", gcs, *args,
               "--output", str(out)]
    log_path = tmp_path / "job.log"
    with open(log_path, "wb") as log:
        job = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                               start_new_session=True)
        try:
            deadline = time.monotonic() + JOB_TIMEOUT_S
            while not list((out / "shards").glob("*.tar")):
                assert job.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "no shard in time"
                time.sleep(0.1)
            os.kill(raylet_pid(temp_dir, second_port), signal.SIGKILL)
            done_at_kill = len(list((out / "done").glob("*.json")))
            code = job.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if job.poll() is None:
                os.killpg(job.pid, signal.SIGKILL)
                job.wait(timeout=30)
    text = log_path.read_text()
    assert done_at_kill < VIDEOS, "the node died too late to matter"
    assert code in (0, EXIT_INCOMPLETE), text[-4000:]
    if code == EXIT_INCOMPLETE:  # a rerun on the surviving node finishes the job
        rerun = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=JOB_TIMEOUT_S)
        assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    videos, clips = manifests(out)
    assert not [c for c in clips if not c["kept"]], "a clip was rejected because a node died"
    assert manifests(out) == manifests(reference)
    assert shard_members(out) == shard_members(reference)  # no sample lost or written twice
    print(f"{done_at_kill} of {VIDEOS} chunks done at the kill; exit {code}; lost-node handling in the job's log:",
          *[line for line in text.splitlines() if "lost" in line or "failed (" in line][:20], sep="\n")


def test_the_driver_loop_recovers_from_a_lost_node(two_nodes, tmp_path):
    """Stand-in workers (no models): the loop alone, with a CPU and a model actor on each node
    and a megabyte per clip in the object stores; the second node is killed once a chunk is done.
    Every chunk still finishes with both of its clips kept, none rejected or left retryable."""
    gcs, env, temp_dir, second_port = two_nodes
    signal_file = tmp_path / "first_chunk"
    driver = subprocess.Popen([sys.executable, "-m", "tests.lost_node_scheduler", gcs, str(signal_file)],
                              env={**env, "PYTHONPATH": str(REPO)}, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not signal_file.exists():
            assert driver.poll() is None, driver.stdout.read()[-4000:]
            assert time.monotonic() < deadline, "no chunk finished in time"
            time.sleep(0.05)
        os.kill(raylet_pid(temp_dir, second_port), signal.SIGKILL)
        output, _ = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
    assert driver.returncode == 0, output[-4000:]
    result = json.loads(next(line for line in output.splitlines() if line.startswith('{"chunks"')))
    chunks = {int(k): v for k, v in result["chunks"].items()}
    assert sorted(chunks) == list(range(8))
    assert all(v == {"kept": 2, "rejected": 0, "retryable": []} for v in chunks.values()), chunks
    recovered = [line for line in output.splitlines() if "lost" in line or "failed (" in line]
    print(f"{len(recovered)} recovery lines:", *recovered[:10], sep="\n")
