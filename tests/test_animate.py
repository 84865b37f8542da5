"""Portrait + speech -> talking video, end to end with random weights of the official renderer.

A frame costs several seconds at full size on these CPUs, so each render here is a few frames.
Checked on real media: the video has the speech's duration at 25 fps (or ``--max-frames``), the
portrait's size and an audio stream; the paste-back leaves the background untouched; a real
LivePortrait template renders with ``--motion``; bad portraits are refused before anything is written.
"""
from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import soundfile as sf

from shards.crop import liveportrait_crop_matrix
from training.animate import EXIT_BAD_INPUT, crop_source, main
from training.paste_back import PasteBack, feathered_mask
from tests.test_sample import ENCODER_DIM, TINY, random_model, template_stats, write_checkpoint

SPEECH_S = 0.12  # three frames at 25 fps


@pytest.fixture(scope="module")
def checkpoint(media, tmp_path_factory) -> Path:
    return write_checkpoint(tmp_path_factory.mktemp("ckpt") / "checkpoint.pt", random_model(TINY, 0),
                            template_stats(media, ENCODER_DIM))


@pytest.fixture(scope="module")
def speech(media, tmp_path_factory) -> Path:
    audio, rate = sf.read(media / "joyvasa_001.wav", dtype="float32")
    path = tmp_path_factory.mktemp("speech") / "speech.wav"
    start = int(2.0 * rate)  # inside an utterance, not the leading silence
    sf.write(path, audio[start:start + int(SPEECH_S * rate)], rate)
    return path


def probe(path: Path) -> dict:
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
        audio = [s for s in container.streams if s.type == "audio"]
        return {"frames": np.stack(frames), "rate": float(video.average_rate), "audio": len(audio),
                "audio_codec": audio[0].codec_context.name if audio else None}


def run(*args) -> int:
    return main([str(a) for a in args] + ["--random-weights", "--no-progress"])


def test_speech_renders_the_portrait_talking(media, checkpoint, speech, tmp_path):
    out = tmp_path / "talking.mp4"
    assert run("--checkpoint", checkpoint, "--image", media / "lp_portrait_s12.jpg", "--audio", speech,
               "--out", out, "--sampler", "ddim", "--steps", "2", "--crf", "0") == 0
    video = probe(out)
    portrait = cv2.cvtColor(cv2.imread(str(media / "lp_portrait_s12.jpg")), cv2.COLOR_BGR2RGB)
    assert video["frames"].shape == (3, *portrait.shape)  # ceil(0.12 s * 25) frames, the portrait's size
    assert video["rate"] == 25.0
    assert video["audio"] == 1 and video["audio_codec"] == "aac"
    # The background comes back: far from the face the frames are the portrait (lossless H.264 in
    # YUV: only the colour conversion's rounding remains).
    source = crop_source(portrait, "haar", "dlib", None)
    far = PasteBack(portrait, source.crop_to_original).mask[..., 0] == 0
    assert 0.2 < far.mean() < 0.95
    error = np.abs(video["frames"][:, far].astype(int) - portrait[far].astype(int))
    assert error.mean() < 1.5
    assert list(tmp_path.iterdir()) == [out]  # no temporary file left


def test_a_real_template_renders_with_motion(media, tmp_path):
    out = tmp_path / "template.mp4"
    assert run("--motion", media / "lp_template_d7.pkl", "--image", media / "lp_portrait_s12.jpg",
               "--out", out, "--max-frames", "2", "--no-pasteback") == 0
    video = probe(out)
    assert video["frames"].shape == (2, 512, 512, 3)
    assert video["audio"] == 0


def test_paste_back_leaves_pixels_outside_the_face_exactly_alone(media):
    portrait = cv2.cvtColor(cv2.imread(str(media / "lp_portrait_s12.jpg")), cv2.COLOR_BGR2RGB)
    h, w = portrait.shape[:2]
    # A face box in the middle of the portrait, as four landmark-like corners of a 68-point layout.
    points = np.zeros((68, 2))
    points[:, 0] = np.linspace(w * 0.3, w * 0.7, 68)
    points[:, 1] = np.linspace(h * 0.3, h * 0.6, 68)
    to_crop = liveportrait_crop_matrix(points)
    paste = PasteBack(portrait, np.linalg.inv(to_crop), feathered_mask())
    crops = np.random.default_rng(0).integers(0, 256, (2, 512, 512, 3), dtype=np.uint8)
    out = paste(crops)
    outside = paste.mask[..., 0] == 0
    assert outside.mean() > 0.05 and (~outside).mean() > 0.05
    assert np.array_equal(out[:, outside], np.broadcast_to(portrait[outside], out[:, outside].shape))
    inside = paste.mask[..., 0] == 1
    assert np.abs(out[:, inside].astype(int) - portrait[inside].astype(int)).mean() > 20


def two_faces(media: Path, path: Path) -> Path:
    portrait = cv2.imread(str(media / "lp_portrait_s12.jpg"))
    cv2.imwrite(str(path), np.concatenate([portrait, portrait], axis=1))
    return path


def no_face(media: Path, path: Path) -> Path:
    ramp = np.tile(np.linspace(0, 255, 400, dtype=np.uint8)[None, :, None], (300, 1, 3))
    cv2.imwrite(str(path), ramp)
    return path


def garbage(media: Path, path: Path) -> Path:
    path.write_bytes(b"not an image at all" * 50)
    return path


@pytest.mark.parametrize("maker,message", [(no_face, "no face"), (two_faces, "2 faces"),
                                           (garbage, "cannot read the portrait")])
def test_bad_portraits_are_refused_with_one_line_and_nothing_written(media, tmp_path, capsys, maker, message):
    image = maker(media, tmp_path / "portrait.png")
    out = tmp_path / "out" / "video.mp4"
    assert run("--motion", media / "lp_template_d7.pkl", "--image", image, "--out", out) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.parent.exists() or list(out.parent.iterdir()) == []
