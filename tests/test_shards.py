"""The shard writer and reader: round trip, atomic appearance, reproducible bytes, bad samples."""
import hashlib

import numpy as np
import pytest

from shards.format import MOTION_SHAPES
from shards.reader import SampleError, decode_sample, iter_raw, iter_samples
from shards.vector import VECTOR_DIM, motion_to_vector, vector_to_motion
from shards.writer import ShardWriter


def _motion(n, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(n, *s)).astype(np.float32) for k, s in MOTION_SHAPES.items()}


def _write(out, n_samples=3, target=1 << 30):
    with ShardWriter(out, 7, target_bytes=target) as w:
        for i in range(n_samples):
            n = 20 + i
            audio = (np.sin(np.arange(n * 640) / 9.0) * 3000).astype(np.int16)
            w.write(f"clip-{i}", _motion(n, i), np.ones((n, 8), np.float32) * i, audio, {"i": i})
    return w.written


def test_round_trip_and_reproducible(tmp_path):
    names = _write(tmp_path / "a")
    assert names == ["shard-000007.tar"]
    samples = list(iter_samples(tmp_path / "a" / names[0]))
    assert [s["__key__"] for s in samples] == ["clip-0", "clip-1", "clip-2"]
    s = samples[1]
    np.testing.assert_array_equal(s["motion"]["exp"], _motion(21, 1)["exp"])
    assert s["audio_feat"].shape == (21, 8) and s["audio_feat"].dtype == np.float16
    assert s["audio"].dtype == np.int16 and s["audio"].shape == (21 * 640,)
    assert s["meta"]["i"] == 1 and s["meta"]["n_frames"] == 21
    _write(tmp_path / "b")
    digest = [hashlib.sha256((tmp_path / d / names[0]).read_bytes()).hexdigest() for d in "ab"]
    assert digest[0] == digest[1]


def test_rollover_and_no_partial_shard_on_error(tmp_path):
    names = _write(tmp_path / "roll", n_samples=3, target=1)
    assert names == ["shard-000007.tar", "shard-000007-01.tar", "shard-000007-02.tar"]
    with pytest.raises(ValueError, match="NaN"):
        with ShardWriter(tmp_path / "bad", 1) as w:
            w.write("ok", _motion(5), np.zeros((5, 4)), np.zeros(3200, np.int16), {})
            bad = _motion(5)
            bad["t"][0, 0] = np.nan
            w.write("bad", bad, np.zeros((5, 4)), np.zeros(3200, np.int16), {})
    assert list((tmp_path / "bad").iterdir()) == []


def test_rejects_misaligned_features(tmp_path):
    with ShardWriter(tmp_path, 0) as w:
        with pytest.raises(ValueError, match="T=5"):
            w.write("k", _motion(5), np.zeros((6, 4)), np.zeros(3200, np.int16), {})
        with pytest.raises(ValueError, match="dots"):
            w.write("a.b", _motion(5), np.zeros((5, 4)), np.zeros(3200, np.int16), {})


def test_decode_reports_missing_and_corrupt_members(tmp_path):
    raw = next(iter_raw(_shard(tmp_path)))
    broken = dict(raw)
    del broken["audio.flac"]
    with pytest.raises(SampleError, match="missing members"):
        decode_sample(broken)
    broken = dict(raw, **{"motion.npz": b"not a zip"})
    with pytest.raises(SampleError, match="cannot decode"):
        decode_sample(broken)


def _shard(tmp_path):
    return tmp_path / _write(tmp_path, n_samples=1)[0]


def test_vector_layout_and_inverse():
    m = _motion(12)
    vec = motion_to_vector(m)
    assert vec.shape == (12, VECTOR_DIM)
    np.testing.assert_array_equal(vec[:, :63], m["exp"].reshape(12, 63))
    np.testing.assert_array_equal(vec[:, 63], m["scale"][:, 0])
    np.testing.assert_array_equal(vec[:, 64:67], m["t"])
    back = vector_to_motion(vec)
    np.testing.assert_array_equal(back["exp"], m["exp"])
    assert back["R"].shape == (12, 3, 3)
    with pytest.raises(ValueError):
        vector_to_motion(vec[:, :69])
