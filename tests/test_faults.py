"""Infrastructure failures are retried and, when retries do not fix them, left for the next run:
never a rejection. Unit checks of the classification, then the job end to end with a model stage
that raises a real CUDA out-of-memory error (``tests.fault_workers``)."""
from __future__ import annotations

import errno
import json
from pathlib import Path

import av
import pytest
import torch
from ray import exceptions as rx

from manifests.audit import main as audit_main
from pipeline.build_shards import main
from pipeline.clip import Clip, VideoInfo
from pipeline.decode import DecodeError
from pipeline.faults import TransientError, transient_kind
from pipeline.incomplete import EXIT_INCOMPLETE
from pipeline.media_kit import make_clip
from pipeline.probe import ProbeError
from pipeline.stages.base import Stage
from tests.fault_workers import attempts, faulty_workers
from tests.pipeline_kit import TEST_OVERRIDES, manifests, ray_session, shard_members, write_list  # noqa: F401


# ---- which failures are the infrastructure's ------------------------------------------------


def wrapped(outer: Exception, inner: Exception) -> Exception:
    try:
        raise outer from inner
    except Exception as exc:  # noqa: BLE001
        return exc


@pytest.mark.parametrize("exc, kind", [
    (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), "out_of_memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"), "out_of_memory"),
    (MemoryError(), "out_of_memory"),
    (ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"), "network"),
    (OSError(errno.EIO, "Input/output error"), "storage"),
    (OSError("When reading information for key 'v.mp4': AWS Error NETWORK_CONNECTION"), "network"),
    (TimeoutError("read timed out"), "timeout"),
    (ProbeError("timeout", "probing v.mp4 took longer than 60 s"), "timeout"),
    (wrapped(ProbeError("unreadable", "cannot read v.mp4"), ConnectionError("reset")), "network"),
    (rx.ActorUnavailableError("The actor is temporarily unavailable", None), "actor_unavailable"),
    (rx.ObjectLostError("ab" * 14, "owner", "call site"), "object_lost"),
    (rx.RayTaskError("process", "traceback", torch.cuda.OutOfMemoryError("CUDA out of memory")), "out_of_memory"),
    # content verdicts and bugs
    (ProbeError("not_found", "no such file: v.mp4"), None),
    (DecodeError("corrupt", "12 packets failed"), None),
    (FileNotFoundError(errno.ENOENT, "No such file"), None),
    (FileNotFoundError(errno.ENOENT, "No such file", "/videos/interview_503_SlowDown.mp4"), None),
    (OSError("AWS Error SLOW_DOWN during GetObject operation: Please reduce your request rate."), "network"),
    (av.error.OSError(errno.EIO, "Input/output error"), None),  # FFmpeg on a file's bytes
    (ValueError("decoded 10 audio samples, expected 12"), None),
    (rx.RayTaskError("process", "traceback", ValueError("bad")), None),
])
def test_transient_kind(exc, kind):
    assert transient_kind(exc) == kind


class Raising(Stage):
    name = "raising"

    def __init__(self, exc: Exception):
        super().__init__({})
        self.exc = exc

    def process(self, clip: Clip) -> None:
        raise self.exc


def a_clip() -> Clip:
    info = VideoInfo(2.0, 25.0, False, 64, 64, 0, True, True)
    return Clip("/videos/a.mp4", "a", 0, start_s=0.0, end_s=1.0, info=info)


def test_a_stage_rejects_for_content_and_raises_for_infrastructure():
    clip = a_clip()
    Raising(ValueError("no usable frame"))([clip])
    assert (clip.rejection.stage, clip.rejection.reason) == ("raising", "error")
    clip = a_clip()
    with pytest.raises(TransientError) as info:
        Raising(torch.cuda.OutOfMemoryError("CUDA out of memory"))([clip])
    assert info.value.kind == "out_of_memory" and clip.kept


# ---- the job end to end ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, list[str]]:
    """Two synthetic talking clips of one kept clip each, one video per chunk; (folder, args)."""
    folder = tmp_path_factory.mktemp("fault_inputs")
    rows = []
    for i in range(2):
        clip = make_clip(folder / f"video_{i}.mp4", fps=25, size=(320, 240), duration=0.8, seed=40 + i)
        rows.append({"path": str(clip.path), "dataset": "synthetic", "language": "en", "speaker": f"s{i}"})
    spec = write_list(folder / "inputs.csv", rows)
    return folder, ["--input", str(spec), "--random-weights", *TEST_OVERRIDES, "work.videos_per_chunk=1",
                    "ray.retry_backoff_s=0.2"]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory, ray_session) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("fault_reference") / "out"
    assert main([*inputs[1], "--output", str(out)]) == 0
    assert sum(c["kept"] for c in manifests(out)[1]) == 2
    return out


def same_output(out: Path, reference: Path) -> bool:
    return manifests(out) == manifests(reference) and shard_members(out) == shard_members(reference)


@pytest.mark.slow
def test_an_out_of_memory_error_once_is_retried_and_the_clip_kept(inputs, reference, tmp_path):
    faults = tmp_path / "faults"
    out = tmp_path / "out"
    assert main([*inputs[1], "--output", str(out)], workers=faulty_workers(faults, "video_", fails=1)) == 0
    assert sorted(attempts(faults).values()) == [2, 2]  # each clip failed once, then passed
    assert same_output(out, reference)
    assert not any((out / "incomplete").glob("*.json"))


@pytest.mark.slow
def test_a_lasting_fault_leaves_its_chunk_for_the_rerun(inputs, reference, tmp_path, capsys):
    faults = tmp_path / "faults"
    out = tmp_path / "out"
    args = [*inputs[1], "--output", str(out), "run.error_budget=1.0"]
    assert main(args, workers=faulty_workers(faults, "video_1", fails=10**6)) == EXIT_INCOMPLETE
    assert list(attempts(faults).values()) == [3]  # ray.max_attempts
    done = sorted(p.name for p in (out / "done").glob("*.json"))
    assert done == ["chunk-000000.json"]
    record = json.loads((out / "incomplete" / "chunk-000001.json").read_text())
    (item,) = record["items"]
    assert (item["step"], item["kind"], item["attempts"]) == ("model", "out_of_memory", 3)
    assert item["source"].endswith("video_1.mp4")
    videos, clips = manifests(out)  # the finished chunk only; nothing rejected for the fault
    assert [v["source"].rsplit("/", 1)[-1] for v in videos] == ["video_0.mp4"]
    assert all(c["kept"] for c in clips)
    run = json.loads((out / "run.json").read_text())
    assert run["incomplete"]["chunks"] == [1] and run["incomplete"]["kinds"] == {"out_of_memory": 1}

    capsys.readouterr()
    assert audit_main([str(out), "--json", "--workers", "1"]) == 0
    waiting = json.loads(capsys.readouterr().out)["summary"]["retryable"]
    assert waiting["chunks"] == [1] and waiting["kinds"] == {"out_of_memory": 1}
    assert waiting["chunks_not_done"] == [1]

    assert main(args) == 0  # the fault is gone: the rerun redoes chunk 1 only
    assert same_output(out, reference)
    assert not list((out / "incomplete").glob("*.json"))
    assert "incomplete" not in json.loads((out / "run.json").read_text())


@pytest.mark.slow
def test_a_rerun_redoes_only_the_items_that_failed(inputs, tmp_path):
    """Both videos in one chunk: one clip keeps failing, the other finishes. The rerun takes the
    finished clip and both plans back from the chunk's journal and calls the models once."""
    args = [*inputs[1], "work.videos_per_chunk=2", "run.error_budget=1.0"]
    reference = tmp_path / "reference"
    assert main([*args, "--output", str(reference)]) == 0
    out = tmp_path / "out"
    failing = faulty_workers(tmp_path / "faults", "video_1", fails=10**6)
    assert main([*args, "--output", str(out)], workers=failing) == EXIT_INCOMPLETE
    (failed_clip,) = attempts(tmp_path / "faults")
    assert not list((out / "done").glob("*.json"))
    assert len(list((out / "spill" / "chunk-000000" / "final").glob("*.pkl"))) == 1

    counting = faulty_workers(tmp_path / "calls", "video_", fails=0)  # counts model calls, never fails
    assert main([*args, "--output", str(out)], workers=counting) == 0
    assert attempts(tmp_path / "calls") == {failed_clip: 1}
    assert json.loads((out / "run.json").read_text())["resumed"] == {"videos": 2, "clips": 1}
    assert same_output(out, reference)
    assert not (out / "spill").exists()


@pytest.mark.slow
def test_the_error_budget_stops_a_failing_run(inputs, tmp_path, caplog):
    faults = tmp_path / "faults"
    out = tmp_path / "out"
    args = [*inputs[1], "--output", str(out), "run.error_budget=0.4", "ray.retry_backoff_s=1.0"]
    assert main(args, workers=faulty_workers(faults, "video_", fails=10**6)) == EXIT_INCOMPLETE
    # one video of two is over 0.4: the run stops at the first clip that exhausts its attempts,
    # before the other clip has had all of its own
    assert sum(attempts(faults).values()) < 2 * 3
    assert not list((out / "done").glob("*.json"))
    run = json.loads((out / "run.json").read_text())
    assert "run.error_budget=0.4" in run["incomplete"]["stopped"]
    assert any("run.error_budget" in r.getMessage() for r in caplog.records)
