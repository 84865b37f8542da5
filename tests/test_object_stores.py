"""Object stores for inputs and outputs, against real servers on 127.0.0.1: S3 (moto) and Google
Cloud Storage (gcp-storage-emulator).

The endpoint reaches pyarrow only through the environment, as it would for MinIO, Ceph or a GCS
emulator: ``AWS_ENDPOINT_URL`` / ``AWS_ENDPOINT_URL_S3`` with fake ``AWS_*`` credentials, and
``STORAGE_EMULATOR_HOST``. Buckets are created and filled with pyarrow itself.
"""
from __future__ import annotations

import hashlib
import random
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
import pytest
from gcp_storage_emulator.server import create_server as create_gcs_server
from moto.server import ThreadedMotoServer

from pipeline.inputs import InputVideo, content_id, filesystem_for, list_inputs, video_id
from pipeline.media_kit import make_clip
from tests.pipeline_kit import TEST_OVERRIDES, manifests, shard_members
from tests.ray_processes import kill_session_processes

REPO = Path(__file__).resolve().parents[1]
# Every variable that could point pyarrow elsewhere or hand it other credentials.
AWS_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE",
            "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ROLE_ARN",
            "AWS_WEB_IDENTITY_TOKEN_FILE")
DEAD_ENDPOINT = "http://127.0.0.1:9"  # the discard port: nothing listens there


@pytest.fixture(scope="module")
def s3_server() -> str:
    """A moto S3 server on a free port of 127.0.0.1; yields its URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_server: str, monkeypatch, tmp_path: Path) -> pafs.S3FileSystem:
    """The environment of a user of an S3-compatible store, and a filesystem to fill it with."""
    for var in AWS_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no_aws_config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no_aws_credentials"))
    return pafs.S3FileSystem(endpoint_override=s3_server.split("://", 1)[1], scheme="http",
                             access_key="testing", secret_key="testing", region="us-east-1",
                             allow_bucket_creation=True)


@pytest.fixture(scope="module")
def gcs_server() -> str:
    """A GCS emulator on a free port of 127.0.0.1 (objects in memory); yields its URL."""
    server = create_gcs_server("127.0.0.1", 0, in_memory=True)
    server.start()
    host, port = server._api._httpd.server_address
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def gcs(gcs_server: str, monkeypatch) -> pafs.GcsFileSystem:
    """The environment of a user of a GCS emulator, and a filesystem to fill it with."""
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    return pafs.GcsFileSystem(endpoint_override=gcs_server.split("://", 1)[1], scheme="http",
                              anonymous=True, project_id="test")


@pytest.fixture(params=["s3", "gs"])
def store(request) -> tuple[str, pafs.FileSystem]:
    """(URI scheme, a filesystem to fill and inspect the store with) for each kind of store."""
    return request.param, request.getfixturevalue("s3" if request.param == "s3" else "gcs")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """A short synthesised talking-face clip (0.8 s: one candidate clip under TEST_OVERRIDES)."""
    folder = tmp_path_factory.mktemp("s3_media")
    return make_clip(folder / "talk.mp4", fps=25, size=(320, 240), duration=0.8, seed=3).path


def upload(fs: pafs.FileSystem, data: bytes | Path, path: str) -> None:
    with fs.open_output_stream(path) as f:
        f.write(data.read_bytes() if isinstance(data, Path) else data)


def objects(fs: pafs.FileSystem, prefix: str) -> dict[str, tuple[int, int, str]]:
    """{key below prefix: (mtime_ns, size, sha256)} of every object below ``prefix``."""
    found = {}
    for info in fs.get_file_info(pafs.FileSelector(prefix, recursive=True, allow_not_found=True)):
        if info.type == pafs.FileType.File:
            with fs.open_input_stream(info.path) as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            found[info.path[len(prefix) + 1:]] = (info.mtime_ns, info.size, digest)
    return found


def test_endpoint_comes_from_the_environment(s3, s3_server: str, monkeypatch) -> None:
    fs, path = filesystem_for("s3://bucket/some/key.mp4")
    options = fs.__reduce__()[1][0]
    assert path == "bucket/some/key.mp4"
    assert (options["endpoint_override"], options["scheme"], options["region"]) == (
        s3_server.split("://", 1)[1], "http", "us-east-1")
    assert filesystem_for("S3://bucket/dir/")[1] == "bucket/dir"

    monkeypatch.setenv("AWS_ENDPOINT_URL", DEAD_ENDPOINT)  # the S3-specific variable wins
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://store.example:9443")
    monkeypatch.setenv("AWS_REGION", "eu-west-3")
    options = filesystem_for("s3://bucket/x.mp4")[0].__reduce__()[1][0]
    assert (options["endpoint_override"], options["scheme"], options["region"]) == (
        "store.example:9443", "https", "eu-west-3")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    assert filesystem_for("s3://bucket/x.mp4")[0].region == "ap-south-1"


def test_gcs_endpoint_comes_from_the_environment(gcs, gcs_server: str) -> None:
    fs, path = filesystem_for("gs://bucket/some/key.mp4")
    assert isinstance(fs, pafs.GcsFileSystem) and path == "bucket/some/key.mp4"
    options = fs.__reduce__()[1][0]
    assert (options["endpoint_override"], options["scheme"], options["anonymous"]) == (
        gcs_server.split("://", 1)[1], "http", True)
    assert filesystem_for("GS://bucket/dir/")[1] == "bucket/dir"


def test_list_inputs_on_a_remote_folder_and_list(store, clip: Path, s3_server: str, monkeypatch,
                                                 tmp_path: Path) -> None:
    scheme, fs = store
    bucket = "listing"
    fs.create_dir(bucket)
    for key in ("videos/talk.mp4", "videos/sub/other.MOV", "videos/notes.txt"):
        upload(fs, clip, f"{bucket}/{key}")
    talk, other = f"{scheme}://{bucket}/videos/talk.mp4", f"{scheme}://{bucket}/videos/sub/other.MOV"

    assert list_inputs(f"{scheme}://{bucket}/videos") == [InputVideo(other), InputVideo(talk)]

    upload(fs, f"path,dataset,language,speaker\n../videos/talk.mp4,mine,en,007\n{other},,,\n".encode(),
           f"{bucket}/lists/inputs.csv")
    upload(fs, b"# remote list\n../videos/talk.mp4\n", f"{bucket}/lists/inputs.txt")
    listed = list_inputs(f"{scheme}://{bucket}/lists/inputs.csv")
    assert listed == [InputVideo(talk, dataset="mine", language="en", speaker="007"), InputVideo(other)]
    assert listed[0].video_id == video_id(talk)
    assert content_id(talk) == content_id(str(clip))  # moved to an object store: the same video
    big = tmp_path / "big.mp4"  # larger than both ends read: head and tail
    big.write_bytes(random.Random(0).randbytes(700_000))
    upload(fs, big, f"{bucket}/blobs/big.mp4")
    assert content_id(f"{scheme}://{bucket}/blobs/big.mp4") == content_id(str(big))
    assert list_inputs(f"{scheme}://{bucket}/lists/inputs.txt") == [InputVideo(talk)]

    if scheme == "s3":  # through AWS_ENDPOINT_URL_S3 alone, and before AWS_ENDPOINT_URL when both are set
        monkeypatch.setenv("AWS_ENDPOINT_URL", DEAD_ENDPOINT)
        monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_server)
        assert list_inputs(f"s3://{bucket}/videos") == [InputVideo(other), InputVideo(talk)]


@pytest.mark.slow
def test_job_reads_and_writes_an_object_store(store, clip: Path, media: Path, tmp_path: Path) -> None:
    """The job as a command (its own local Ray, whose workers inherit the endpoint) with the
    videos in a bucket and the output in the same bucket; a second run writes nothing."""
    scheme, fs = store
    bucket = "talking"
    fs.create_dir(bucket)
    upload(fs, clip, f"{bucket}/videos/talk.mp4")
    upload(fs, b"not a video", f"{bucket}/videos/readme.txt")
    source = f"{scheme}://{bucket}/videos/talk.mp4"

    def build() -> str:
        temp_dir = tempfile.mkdtemp(prefix="ths", dir="/tmp")  # short: Ray's socket paths must be short
        command = [sys.executable, "pipeline/build_shards.py", "--input", f"{scheme}://{bucket}/videos",
                   "--output", f"{scheme}://{bucket}/out", "--random-weights", *TEST_OVERRIDES,
                   f"ray.temp_dir={temp_dir}"]
        try:
            result = subprocess.run(command, check=False, cwd=REPO, env=os.environ.copy(),
                                    capture_output=True, text=True, timeout=300, start_new_session=True)
        finally:
            kill_session_processes(temp_dir)
            shutil.rmtree(temp_dir, ignore_errors=True)
        log = result.stdout + result.stderr
        assert result.returncode == 0, log[-4000:]
        return log

    build()
    first = objects(fs, f"{bucket}/out")
    names = set(first)
    assert {"manifests/videos.parquet", "manifests/clips.parquet", "stats.json", "run.json",
            "config.yaml", "plan/plan-0000.parquet", "done/chunk-000000.json"} <= names
    assert any(n.startswith("shards/") and n.endswith(".tar") for n in names)
    assert not [n for n in names if n.endswith(".tmp")]
    assert objects(fs, f"{bucket}/videos").keys() == {"talk.mp4", "readme.txt"}  # inputs untouched

    local = tmp_path / "out"  # a local copy, read with the same helpers as the local-output tests
    pafs.copy_files(f"{bucket}/out", str(local), source_filesystem=fs)
    videos, clips = manifests(local)
    assert [(v["source"], v["status"]) for v in videos] == [(source, "ok")]
    kept = [c for c in clips if c["kept"]]
    samples = shard_members(local)
    assert len(kept) == 1 and kept[0]["source"] == source
    assert sorted(f"{c['shard']}/{c['key']}" for c in kept) == sorted(samples)
    for c in kept:
        assert c["key"] == c["clip_id"] and f"shards/{c['shard']}" in names

    log = build()
    assert "nothing to do" in log
    assert objects(fs, f"{bucket}/out") == first


# ---- the readers take what the writer takes: the audit and the trainer on s3:// and gs://


@pytest.fixture(scope="module")
def local_output(tmp_path_factory) -> Path:
    """A small pipeline output folder (tests.output_fixture), to upload to each store."""
    from tests.output_fixture import build_output

    return build_output(tmp_path_factory.mktemp("reader_out") / "out").root


def uploaded(fs: pafs.FileSystem, local: Path, bucket: str) -> str:
    """The output uploaded below ``bucket/out``; returns the bucket path of the copy."""
    fs.create_dir(bucket)
    pafs.copy_files(str(local), f"{bucket}/out", destination_filesystem=fs)
    return f"{bucket}/out"


def test_audit_reads_an_output_in_an_object_store(store, local_output: Path, capsys) -> None:
    from manifests.audit import main as audit

    scheme, fs = store
    uri = f"{scheme}://{uploaded(fs, local_output, 'audited')}"
    reports = []
    for root in (str(local_output), uri):
        code = audit([root, "--deep", "--json", "--workers", "1"])
        reports.append((code, json.loads(capsys.readouterr().out)))
    (local_code, local), (remote_code, remote) = reports
    assert local_code == remote_code == 0 and remote["ok"], remote["problems"]
    assert remote["counts"] == local["counts"] and remote["counts"]["stats_recomputed"] == 1
    assert remote["summary"]["root"] == uri
    # damage one shard in the store: the remote audit names it
    shard = sorted(n for n in objects(fs, "audited/out/shards"))[0]
    with fs.open_input_stream(f"audited/out/shards/{shard}") as f:
        data = f.read()
    upload(fs, data[: len(data) // 2], f"audited/out/shards/{shard}")
    assert audit([uri, "--json", "--workers", "1"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert any(p["check"] == "truncated_shard" and p["shard"] == shard for p in problems)


def test_training_reads_an_output_in_an_object_store(store, local_output: Path, tmp_path: Path) -> None:
    from training.checkpoint import load_checkpoint
    from training.run import run_from_args

    scheme, fs = store
    uri = f"{scheme}://{uploaded(fs, local_output, 'trained')}"
    summary = run_from_args(["--shards", uri, "--out", str(tmp_path / "run"), "model.width=32",
                             "model.layers=1", "model.heads=2", "model.w_pre=5", "model.w_cur=20",
                             "data.batch_size=4", "data.num_workers=1", "train.max_steps=2",
                             "train.val_batches=1", "train.progress=false", "train.threads=1"])
    assert summary["step"] == 2
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["stats"] == json.loads((local_output / "stats.json").read_text())
