"""The output's fingerprint: a rerun with a setting that changes the output is refused naming the
key, before it writes anything; a setting that only changes how the work runs is accepted."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from configs import load_config, to_dict
from pipeline import fingerprint
from pipeline.build_shards import main
from pipeline.media_kit import make_clip
from pipeline.outdir import OutputDir
from tests.pipeline_kit import TEST_OVERRIDES, manifests, ray_session, write_list  # noqa: F401


def settings(*overrides: str) -> dict:
    return fingerprint.output_settings(to_dict(load_config("pipeline", overrides)))


def test_output_settings_leave_out_what_only_runs_the_work():
    base = settings()
    assert base["filters.sync.min_conf"] == 4.0 and base["split.val_fraction"] == 0.05
    assert base["faces.landmarks"] == "dlib" and base["models.audio_encoder.name"] == "chinese_hubert_base"
    assert not [k for k in base if k.split(".")[0] in ("ray", "work", "progress", "probe")]
    for override in ("ray.cpu_workers=3", "work.videos_per_chunk=2", "progress.enabled=false",
                     "decode.timeout_s=5", "shots.timeout_s=5", "models.device=cpu", "ray.task_timeout_s=9",
                     "filters.sync.batch_size=64", "models.cpu_runtime=torch", "weights.dir=/elsewhere"):
        assert settings(override) == base, override


def test_every_output_setting_counts():
    base = settings()
    for override, key in (("filters.sync.min_conf=6", "filters.sync.min_conf"),
                          ("split.val_fraction=0.1", "split.val_fraction"),
                          ("clips.cut_margin_s=0.5", "clips.cut_margin_s"),
                          ("faces.landmarks=insightface", "faces.landmarks"),
                          ("models.audio_encoder.name=wav2vec2_base_960h", "models.audio_encoder.name"),
                          ("filters.quality.mode=score", "filters.quality.mode"),
                          ("weights.seed=3", "weights.seed")):
        diffs = fingerprint.differences(base, settings(override))
        assert [d.split(" ")[0] for d in diffs] == [key], (override, diffs)


def test_score_mode_thresholds_do_not_count():
    """A filter that only scores keeps every clip whatever its threshold."""
    scored = settings("filters.quality.mode=score")
    assert settings("filters.quality.mode=score", "filters.quality.threshold=1") == scored
    assert settings("filters.quality.threshold=1") != settings()


def test_weights_are_compared_by_hash(tmp_path: Path):
    out = OutputDir(tmp_path / "out")
    fingerprint.check_settings(out, to_dict(load_config("pipeline")), None)
    fingerprint.check_weights(out, {"motion": "aa", "sync": "bb"})
    fingerprint.check_weights(out, {"motion": "aa", "sync": "bb"})
    with pytest.raises(fingerprint.FingerprintError, match=r"weights_hash\.sync \('bb' -> 'cc'\)"):
        fingerprint.check_weights(out, {"motion": "aa", "sync": "cc"})


def test_adopted_from_an_older_outputs_done_chunks(tmp_path: Path):
    out = OutputDir(tmp_path / "out")
    fingerprint.check_settings(out, to_dict(load_config("pipeline")), None)
    with pytest.raises(fingerprint.FingerprintError, match="weights_hash.motion"):
        fingerprint.check_weights(out, {"motion": "new"}, done_hashes={"motion": "old"})


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_rerun_refused_on_a_changed_setting_and_accepted_on_a_run_setting(tmp_path: Path, caplog,
                                                                          ray_session):  # noqa: F811
    videos = [make_clip(tmp_path / "inputs" / f"v{i}.mp4", size=(320, 240), duration=0.8, seed=30 + i).path
              for i in range(2)]
    rows = [{"path": str(v), "dataset": "synthetic", "language": "en", "speaker": f"s{i}"}
            for i, v in enumerate(videos)]
    first = write_list(tmp_path / "first.csv", rows[:1])
    out = tmp_path / "out"
    args = ["--random-weights", *TEST_OVERRIDES, "--output", str(out)]
    assert main(["--input", str(first), *args]) == 0
    stored = json.loads((out / fingerprint.FINGERPRINT_FILE).read_text())
    assert stored["settings"]["split.val_fraction"] == 0.05 and stored["weight_hashes"]
    config_yaml = (out / "config.yaml").read_text()
    before = listing(out)

    # A grown input with a changed drop threshold and split: refused, naming both keys, nothing written.
    grown = write_list(tmp_path / "grown.csv", rows)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="build_shards"):
        assert main(["--input", str(grown), *args, "filters.audio.min_rms_db=-30", "split.val_fraction=0.2"]) == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert "filters.audio.min_rms_db (-50.0 -> -30)" in errors[0] and "split.val_fraction (0.05 -> 0.2)" in errors[0]
    assert listing(out) == before

    # An output made before fingerprints existed adopts its config.yaml's settings.
    (out / fingerprint.FINGERPRINT_FILE).unlink()
    assert main(["--input", str(grown), *args, "clips.max_len_s=0.7"]) == 2
    assert not (out / fingerprint.FINGERPRINT_FILE).exists()

    # The same grown input with settings that only change how the work runs: accepted and processed.
    assert main(["--input", str(grown), *args, "ray.max_attempts=3", "work.videos_per_chunk=4",
                 "ray.task_timeout_s=600", "progress.enabled=true"]) == 0
    adopted = json.loads((out / fingerprint.FINGERPRINT_FILE).read_text())
    assert adopted["settings"] == stored["settings"] and adopted["adopted_from"] == "config.yaml"
    assert adopted["weight_hashes"] == stored["weight_hashes"]
    assert (out / "config.yaml").read_text() == config_yaml
    later = list((out / "config.runs").glob("run-*.yaml"))
    assert len(later) == 1 and "max_attempts: 3" in later[0].read_text()
    videos_table, clips = manifests(out)
    assert len(videos_table) == 2 and sum(c["kept"] for c in clips) == 2


def test_the_identity_threshold_counts_as_applied(tmp_path: Path):
    """``identity.threshold: null`` is recorded as the backend's default, so a default changed by a
    later version is refused like any other change; a fingerprint that recorded null takes today's."""
    from shards.identity import GROUP_THRESHOLDS

    default = GROUP_THRESHOLDS["dlib_resnet128"]
    assert settings()["identity.threshold"] == default
    assert settings(f"identity.threshold={default}") == settings()
    assert settings("identity.backend=none")["identity.threshold"] is None
    assert settings("identity.backend=insightface")["identity.threshold"] == GROUP_THRESHOLDS["insightface_w600k_r50"]

    out = OutputDir(tmp_path / "out")
    cfg = to_dict(load_config("pipeline"))
    fingerprint.write(out, {**settings(), "identity.threshold": default + 0.1}, None)
    with pytest.raises(fingerprint.FingerprintError, match=r"identity\.threshold"):
        fingerprint.check_settings(out, cfg, None)
    fingerprint.write(out, {**settings(), "identity.threshold": None}, None)  # an older fingerprint
    assert fingerprint.check_settings(out, cfg, None)["settings"]["identity.threshold"] == default
