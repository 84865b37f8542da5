"""Fast tests of the pipeline's pieces that need no model: filters, split, plan, stats, outputs."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from filters.cheap import SILENCE_DB, audio_rms_db, check_audio, check_duration, check_faces
from filters.head_motion import check_head_motion, head_motion_scores
from manifests.schema import CLIPS, SCHEMA_VERSION
from pipeline.chunk_writer import write_chunk
from pipeline.clip import Clip, VideoInfo
from configs import load_config, to_dict
from pipeline.inputs import InputVideo, content_id, video_id
from pipeline import manifest_writer
from pipeline.manifest_writer import RunMeta, clip_row, consolidate, video_row, write_parts
from pipeline.outdir import OutputDir, part_name
from pipeline.plan import PLAN_SCHEMA, plan_chunks
from shards.pose import degrees_to_logits
from shards.split import TRAIN, VAL, assign_split, split_of
from pipeline.stages.cheap_filter import AudioFilterStage, DurationFilterStage

from pipeline.stages.head_motion import HeadMotionStage
from pipeline.stages.sync import shift_audio
from pipeline.stats import compute_stats, merged_stats
from shards.reader import iter_samples
from shards.stats import RunningMoments
from shards.format import FPS, MOTION_SHAPES, SAMPLES_PER_FRAME
from shards.vector import motion_to_vector

REPO = Path(__file__).resolve().parents[1]


def make_clip(start: float = 0.0, end: float = 2.0, source: str = "/data/a.mp4", **kw) -> Clip:
    info = VideoInfo(duration_s=10.0, fps=25.0, is_vfr=False, width=640, height=480, rotation=0,
                     has_video=True, has_audio=True)
    return Clip(source=source, video_id=video_id(source), chunk=0, start_s=start, end_s=end, info=info, **kw)


def cfg_with(*overrides: str) -> dict:
    return to_dict(load_config("pipeline", overrides))


# ------------------------------------------------------------------------------------------ filters

def test_cheap_checks():
    assert audio_rms_db(np.zeros(640, np.float32)) == SILENCE_DB
    assert audio_rms_db(np.full(640, 0.5, np.float32)) == pytest.approx(20 * np.log10(0.5))
    assert check_duration(1.0, 2.0, 10.0) == "too_short"
    assert check_duration(11.0, 2.0, 10.0) == "too_long"
    assert check_duration(5.0, 2.0, 10.0) is None
    assert check_audio(False, None, -50) == "no_audio"
    assert check_audio(True, -70, -50) == "silent_audio"
    assert check_audio(True, -20, -50) is None
    assert check_faces(0, 0, 1, 64) == "no_face"
    assert check_faces(2, 100, 1, 64) == "multiple_faces"
    assert check_faces(1, 30, 1, 64) == "face_too_small"
    assert check_faces(1, 100, 1, 64) is None


def _motion(yaw_deg: np.ndarray, t_x: np.ndarray) -> dict[str, np.ndarray]:
    n = len(yaw_deg)
    zeros = np.zeros(n)
    return {"pitch": degrees_to_logits(zeros), "yaw": degrees_to_logits(yaw_deg),
            "roll": degrees_to_logits(zeros), "t": np.stack([t_x, np.zeros(n), np.zeros(n)], 1)}


def test_head_motion_scores_measure_range_and_speed():
    n = 100
    yaw = np.linspace(-20, 20, n)  # 40 degrees over 4 s: 10 deg/s
    scores = head_motion_scores(_motion(yaw, np.zeros(n)))
    assert scores["pose_range_deg"] == pytest.approx(40 * 0.96, abs=1.0)  # 2nd to 98th percentile
    assert scores["pose_speed_deg_s"] == pytest.approx(40 / (n - 1) * FPS, rel=0.05)
    assert scores["t_range"] == 0 and scores["t_speed"] == 0
    still = head_motion_scores(_motion(np.zeros(n), np.zeros(n)))
    assert still["pose_range_deg"] < 0.5
    assert check_head_motion(scores, 30, 100, 1, 1) == "pose_range"
    assert check_head_motion(scores, 60, 5, 1, 1) == "pose_speed"
    assert check_head_motion(scores, 60, 100, 1, 1) is None


def test_filter_stages_drop_or_only_score():
    quiet = make_clip(audio=np.full(50 * SAMPLES_PER_FRAME, 1e-4, np.float32))
    (dropped,) = AudioFilterStage(cfg_with())([quiet])
    assert dropped.rejection.stage == "cheap" and dropped.rejection.reason == "silent_audio"
    assert dropped.scores["audio_rms_db"] == pytest.approx(-80, abs=0.1)
    assert dropped.audio is None  # a rejected clip drops its arrays

    quiet = make_clip(audio=np.full(50 * SAMPLES_PER_FRAME, 1e-4, np.float32))
    (scored,) = AudioFilterStage(cfg_with("filters.audio.mode=score"))([quiet])
    assert scored.kept and scored.scores["audio_rms_db"] == pytest.approx(-80, abs=0.1)

    (short,) = DurationFilterStage(cfg_with())([make_clip(0.0, 1.0)])
    assert short.rejection.reason == "too_short" and short.scores["duration_s"] == 1.0

    n = 60
    shaky = make_clip(motion=_motion(40 * np.sin(np.arange(n) / 2.0), np.zeros(n)))
    (moved,) = HeadMotionStage(cfg_with())([shaky])
    assert moved.rejection.stage == "head_motion" and moved.rejection.reason == "pose_range"
    with pytest.raises(ValueError, match="mode"):
        AudioFilterStage(cfg_with("filters.audio.mode=maybe"))


def test_stage_turns_exceptions_into_rejections():
    broken = make_clip(motion={"pitch": np.zeros((3, 5))})  # wrong shapes: the filter raises
    (clip,) = HeadMotionStage(cfg_with())([broken])
    assert clip.rejection.stage == "head_motion" and clip.rejection.reason == "error"
    assert "Error" in clip.rejection.error


def test_shift_audio_delays_or_advances_by_whole_frames():
    audio = np.arange(10 * SAMPLES_PER_FRAME, dtype=np.float32)
    later = shift_audio(audio, 2)
    assert len(later) == len(audio)
    assert np.all(later[:2 * SAMPLES_PER_FRAME] == 0)
    np.testing.assert_array_equal(later[2 * SAMPLES_PER_FRAME:], audio[:-2 * SAMPLES_PER_FRAME])
    earlier = shift_audio(audio, -1)
    np.testing.assert_array_equal(earlier[:-SAMPLES_PER_FRAME], audio[SAMPLES_PER_FRAME:])
    assert shift_audio(audio, 0) is audio


def test_working_size_keeps_aspect_and_rotation():
    from pipeline.stages.faces import working_size

    assert working_size(1920, 1080, 0, 720) == (720, 404)
    assert working_size(1920, 1080, 90, 720) == (404, 720)
    assert working_size(320, 240, 0, 720) == (320, 240)


# ------------------------------------------------------------------------------------ split, plan

def test_split_is_by_group_and_deterministic():
    groups = [f"video:{i}" for i in range(2000)]
    splits = [assign_split(g, 0.1) for g in groups]
    assert splits == [assign_split(g, 0.1) for g in groups]
    assert 0.07 < splits.count(VAL) / len(groups) < 0.13
    # A speaker's clips share one split whatever video they come from.
    assert len({split_of("alice", video_id(f"/v/{i}.mp4"), 0.5) for i in range(20)}) == 1
    assert assign_split("video:x", 0.0) == TRAIN and assign_split("video:x", 1.0) == VAL


def files(folder: Path, names: list[str]) -> list[Path]:
    """Small files of distinct content (a video's id is its content)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(f"video {name}".encode())
    return [folder / name for name in names]


def test_plan_is_stable_and_grows_with_new_inputs(tmp_path: Path):
    out = OutputDir(tmp_path / "out")
    data = tmp_path / "data"
    paths = files(data, [f"v{i}.mp4" for i in (3, 1, 2, 0, 4)])
    videos = [InputVideo(str(p), speaker=f"s{i % 2}") for i, p in zip((3, 1, 2, 0, 4), paths)]
    chunks = plan_chunks(out, videos, videos_per_chunk=2)
    assert [[Path(v.source).name for v in c.videos] for c in chunks] == [
        ["v0.mp4", "v1.mp4"], ["v2.mp4", "v3.mp4"], ["v4.mp4"]]
    assert chunks[0].videos[1].speaker == "s1"
    assert chunks[0].videos[0].video_id == content_id(str(data / "v0.mp4"))
    plan_file = tmp_path / "out" / "plan" / "plan-0000.parquet"
    mtime = plan_file.stat().st_mtime_ns
    assert plan_chunks(out, list(reversed(videos)), videos_per_chunk=2) == chunks
    assert plan_file.stat().st_mtime_ns == mtime  # nothing new: nothing written

    (new,) = files(data, ["a_new.mp4"])
    grown = plan_chunks(out, videos + [InputVideo(str(new))], videos_per_chunk=2)
    assert grown[:3] == chunks
    assert grown[3].index == 3 and [v.source for v in grown[3].videos] == [str(new)]
    assert (tmp_path / "out" / "plan" / "plan-0001.parquet").is_file()


def test_moved_input_keeps_its_plan_and_is_read_where_it_is_now(tmp_path: Path):
    out = OutputDir(tmp_path / "out")
    old = files(tmp_path / "data", ["a.mp4", "b.mp4"])
    chunks = plan_chunks(out, [InputVideo(str(p)) for p in old], videos_per_chunk=1)
    moved = tmp_path / "mnt" / "data"
    moved.parent.mkdir()
    (tmp_path / "data").rename(moved)
    again = plan_chunks(out, [InputVideo(str(moved / "b.mp4")), InputVideo(str(moved / "a.mp4"))], 1)
    assert len(list((tmp_path / "out" / "plan").iterdir())) == 1  # nothing planned again
    assert [[(v.video_id, v.source) for v in c.videos] for c in again] == [
        [(c.videos[0].video_id, str(moved / Path(c.videos[0].source).name))] for c in chunks]


def test_output_with_path_ids_keeps_them(tmp_path: Path):
    """A plan written when a video's id was the uuid of its path: a re-run uses those ids and plans
    nothing again; a new file gets a content id."""
    out = OutputDir(tmp_path / "out")
    paths = files(tmp_path / "data", ["a.mp4", "b.mp4"])
    rows = [{"video_id": video_id(str(p)), "source": str(p), "dataset": None, "language": None,
             "speaker": None, "chunk": i} for i, p in enumerate(paths)]
    out.write_parquet("plan/plan-0000.parquet", pa.Table.from_pylist(rows, schema=PLAN_SCHEMA))
    (new,) = files(tmp_path / "data", ["c.mp4"])
    chunks = plan_chunks(out, [InputVideo(str(p)) for p in [*paths, new]], videos_per_chunk=1)
    assert [c.videos[0].video_id for c in chunks] == [video_id(str(paths[0])), video_id(str(paths[1])),
                                                      content_id(str(new))]
    assert len(list((tmp_path / "out" / "plan").iterdir())) == 2


# ------------------------------------------------------------------------------ stats, manifests

def test_running_moments_match_numpy():
    rng = np.random.default_rng(0)
    parts = [rng.normal(3, 2, size=(n, 5)) for n in (1, 7, 100, 33)]
    moments = RunningMoments()
    for p in parts:
        moments.update(p)
    every = np.concatenate(parts)
    np.testing.assert_allclose(moments.mean, every.mean(0))
    np.testing.assert_allclose(moments.std, every.std(0))
    np.testing.assert_array_equal(moments.min, every.min(0))
    np.testing.assert_array_equal(moments.max, every.max(0))
    assert moments.n == len(every)


def test_manifest_parts_consolidate_sorted_with_schema(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(manifest_writer, "ROW_GROUP_ROWS", 3)  # 4 clips: written as two row groups
    out = OutputDir(tmp_path)
    meta = RunMeta({"sync": {"min_conf": 4}}, {"motion": "lp"}, {"motion": "random"}, True)
    rows = {}
    for chunk, source in ((1, "/b.mp4"), (0, "/a.mp4")):
        video = Clip(source=source, video_id=video_id(source), chunk=chunk, info=make_clip().info)
        kept, rejected = make_clip(2.0, 4.0, source), make_clip(0.0, 2.0, source)
        kept.chunk = rejected.chunk = chunk
        rejected.reject("sync", "low_sync_conf")
        rejected.scores["sync_conf"] = 1.5
        rows[chunk] = [clip_row(kept, TRAIN, meta, "shard-000000.tar", {"json": "ab"}),
                       clip_row(rejected, TRAIN, meta)]
        write_parts(out, chunk, [video_row(video, [kept, rejected])], rows[chunk])
    videos, clips = consolidate(out, [0, 1])
    assert videos.column("source").to_pylist() == ["/a.mp4", "/b.mp4"]
    assert videos.column("n_kept").to_pylist() == [1, 1]
    assert clips.column("start_s").to_pylist() == [0.0, 2.0, 0.0, 2.0]
    # the driver holds the JSON repeated on every row once per distinct value; the file, plain strings
    assert clips.schema.equals(manifest_writer.gathering_schema(CLIPS))
    assert clips.column("thresholds").combine_chunks().dictionary.to_pylist() == [json.dumps(meta.thresholds)]
    parquet = pq.ParquetFile(tmp_path / "manifests" / "clips.parquet")
    assert parquet.num_row_groups == 2
    table = parquet.read()
    assert table.schema.remove_metadata().equals(CLIPS)
    assert table.schema.metadata[b"schema_version"] == str(SCHEMA_VERSION).encode()
    assert table.to_pylist() == clips.cast(CLIPS).to_pylist()
    first = table.to_pylist()[0]
    assert first["stage"] == "sync" and first["reason"] == "low_sync_conf" and not first["kept"]
    assert first["score_sync_conf"] == 1.5 and first["score_quality"] is None
    assert json.loads(first["thresholds"]) == {"sync": {"min_conf": 4}} and first["random_weights"]
    assert (tmp_path / part_name(0, "clips")).is_file()


def fake_kept_clip(start: float, source: str, speaker: str) -> Clip:
    """A kept clip carrying model outputs of the right shapes, as the model actor returns it."""
    clip = make_clip(start, start + 0.4, source)
    clip.speaker = speaker
    n, rng = clip.n_frames, np.random.default_rng(int(start * 10))
    clip.motion = {name: rng.normal(size=(n, *shape)).astype(np.float32) for name, shape in MOTION_SHAPES.items()}
    clip.audio_feat = rng.normal(size=(n, 8)).astype(np.float32)
    clip.audio = (0.1 * rng.normal(size=n * SAMPLES_PER_FRAME)).astype(np.float32)
    clip.scores = {"duration_s": 0.4, "sync_conf": 5.0}
    return clip


def test_chunk_writer_and_stats_on_a_remote_output(tmp_path: Path):
    """Shards, manifest parts and the done file reach an object-store-like filesystem whole, and
    the statistics read them back from there (training split only)."""
    bucket = pafs.SubTreeFileSystem(str(tmp_path / "bucket"), pafs.LocalFileSystem())
    (tmp_path / "bucket").mkdir()
    out = OutputDir("runs/out", filesystem=bucket)
    meta = RunMeta({}, {"motion": "lp"}, {"motion": "random"}, True)
    clips = [fake_kept_clip(0.4 * i, "/v.mp4", speaker) for i, speaker in enumerate(["a", "b", "c", "d"])]
    clips[1].motion["exp"][0, 0, 0] = np.nan  # cannot be written: rejected, the chunk goes on
    cfg = cfg_with("split.val_fraction=0.5")
    video = Clip(source="/v.mp4", video_id=video_id("/v.mp4"), chunk=7, info=clips[0].info)
    for c in clips:
        c.chunk = 7
    full = {c.clip_id: c for c in clips}
    done = write_chunk(out, 7, [video], [c.summary() for c in clips], lambda s: full[s.clip_id], meta, cfg)
    root = tmp_path / "bucket" / "runs" / "out"
    assert (root / "done" / "chunk-000007.json").is_file()
    assert done["kept"] == 3 and done["clip_rejections"] == {"write/invalid_sample": 1}
    assert not any(out.staging.rglob("*.tar")), "uploaded files leave the staging folder"
    rows = pq.read_table(root / "manifests" / "parts" / "chunk-000007.clips.parquet").to_pylist()
    assert [r["kept"] for r in rows] == [True, False, True, True]
    train_ids = {r["clip_id"] for r in rows if r["kept"] and r["split"] == TRAIN}
    # one shard per split, named for it, each holding only its split's samples (by the samples' own meta)
    assert sorted(done["shards"]) == ["shard-000007-train.tar", "shard-000007-val.tar"]
    for row in (r for r in rows if r["kept"]):
        assert row["shard"] == f"shard-000007-{row['split']}.tar"
    for name in done["shards"]:
        splits = {s["meta"]["split"] for s in iter_samples(root / "shards" / name)}
        assert splits == {name.split("-")[2].removesuffix(".tar")}
    stats = compute_stats(out, done["shards"])
    train = [c for c in clips if c.clip_id in train_ids]
    assert len(train) == 2, "speaker a is in val, b is not written, c and d are in train"
    assert stats["n_clips"] == 2 and stats["n_frames"] == sum(c.n_frames for c in train)
    vectors = np.concatenate([motion_to_vector(c.motion) for c in train])
    np.testing.assert_allclose(stats["vector"]["mean"], vectors.mean(0), rtol=1e-5, atol=1e-6)
    # ranges leave out each clip's most extreme frame (shards.stats; these clips are under 200 frames)
    second_highest = np.max([np.sort(motion_to_vector(c.motion), 0)[-2] for c in train], 0)
    np.testing.assert_allclose(stats["vector"]["max"], second_highest, rtol=1e-6)
    merged = merged_stats(out, {7: done}, {})  # from the done record, no shard read
    assert (merged["n_clips"], merged["n_frames"]) == (stats["n_clips"], stats["n_frames"])
    for name in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(merged["vector"][name], stats["vector"][name], rtol=1e-12, atol=1e-12)
    out.close()


def test_output_dir_writes_atomically_and_lists_without_temporaries(tmp_path: Path):
    out = OutputDir(tmp_path)
    out.write_bytes("done/chunk-000001.json", b"{}")
    (tmp_path / "done" / "chunk-000002.json.1234.tmp").write_bytes(b"partial")
    assert out.list("done") == ["done/chunk-000001.json"]
    assert out.exists("done/chunk-000001.json") and not out.exists("done/chunk-000002.json")
    out.remove_temporaries("done")
    assert sorted(os.listdir(tmp_path / "done")) == ["chunk-000001.json"]


EXIT_RIGHT_AFTER_READING = """
import sys
import pyarrow as pa
from pipeline.outdir import OutputDir
out = OutputDir(sys.argv[1])
out.write_parquet("t.parquet", pa.table({"a": list(range(1000)), "b": [str(i) for i in range(1000)]}))
for _ in range(3):
    assert out.read_parquet("t.parquet").num_rows == 1000
"""


def test_a_process_that_exits_right_after_reading_parquet_exits_cleanly(tmp_path: Path):
    """``pq.read_table`` on an in-memory source aborted about 1 in 3 such processes at exit (Arrow
    threads still busy after it returned); a job driver exits right after its last read."""
    import subprocess
    import sys

    script = tmp_path / "read_and_exit.py"
    script.write_text(EXIT_RIGHT_AFTER_READING)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    codes = [subprocess.run([sys.executable, str(script), str(tmp_path / "out")], env=env,
                            capture_output=True, timeout=60).returncode for _ in range(12)]
    assert codes == [0] * 12


DRIVER_AND_CPU_WORKER = """
import sys
import pipeline.build_shards, pipeline.chunk_writer, pipeline.stats
from configs import load_config, to_dict
from pipeline.workers import CpuWorker
CpuWorker(to_dict(load_config("pipeline", [])))
print(sorted(m for m in ("torch", "transformers", "pyiqa", "onnxruntime") if m in sys.modules))
"""


def test_driver_and_cpu_workers_never_import_the_model_libraries():
    """Only model workers pay for torch and the model libraries (about 5 CPU-seconds per process)."""
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", DRIVER_AND_CPU_WORKER], env=env, capture_output=True,
                         text=True, timeout=120, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


# ----------------------------------------------------------------------------------- cluster yaml

def test_ray_cluster_yaml_validates_against_rays_schema():
    import jsonschema
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "ray_cluster.yaml").read_text())
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    validate_config(prepare_config(config))  # Ray's own check, after filling the AWS defaults
    assert config["provider"]["type"] == "aws"
    gpu = config["available_node_types"]["gpu_worker"]["node_config"]["InstanceType"]
    assert gpu.startswith(("g", "p"))
    assert any("scripts/setup.sh" in cmd for cmd in config["setup_commands"])
    assert any("RAY_AUTH_MODE" in cmd for cmd in config["head_start_ray_commands"])
