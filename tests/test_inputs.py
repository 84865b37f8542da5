"""Input listing from folders and lists, and the deterministic video and clip ids."""
from __future__ import annotations

import hashlib

import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.inputs import InputError, InputVideo, clip_id, content_id, identify, list_inputs, normalise_uri, video_id


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A folder of videos (mixed-case extensions, nested) and other files."""
    for name in ["b.mp4", "a.MOV", "sub/c.mkv", "sub/deeper/d.WebM", "e.avi", "f.m4v",
                 "notes.txt", "thumb.jpg", "sub/clip.mp4.part"]:
        path = tmp_path / "videos" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")
    return tmp_path / "videos"


def test_folder_is_listed_recursively_and_sorted(tree: Path) -> None:
    videos = list_inputs(tree)
    names = [Path(v.source).relative_to(tree).as_posix() for v in videos]
    assert names == ["a.MOV", "b.mp4", "e.avi", "f.m4v", "sub/c.mkv", "sub/deeper/d.WebM"]
    assert all(Path(v.source).is_absolute() for v in videos)
    assert videos[0] == InputVideo(source=str(tree / "a.MOV"))


def test_folder_uri_through_pyarrow(tree: Path) -> None:
    assert list_inputs(tree.as_uri()) == list_inputs(tree)


def test_txt_list_resolves_relative_to_the_list(tree: Path, tmp_path: Path, monkeypatch) -> None:
    listing = tree / "list.txt"
    listing.write_text("# my videos\n\nb.mp4\n  sub/c.mkv  \n/abs/elsewhere.mp4\ns3://bucket/x.mp4\n")
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    sources = [v.source for v in list_inputs(listing)]
    assert sources == [str(tree / "b.mp4"), str(tree / "sub" / "c.mkv"), "/abs/elsewhere.mp4",
                       "s3://bucket/x.mp4"]


def test_csv_with_labels_kept_as_text(tree: Path) -> None:
    listing = tree / "list.csv"
    listing.write_text("path,dataset,language,speaker,extra\n"
                       "b.mp4,vox,en,007,1\n"
                       "sub/c.mkv,,de,,2\n"
                       "b.mp4,dup,fr,9,3\n")
    videos = list_inputs(listing)
    assert videos == [
        InputVideo(str(tree / "b.mp4"), dataset="vox", language="en", speaker="007"),
        InputVideo(str(tree / "sub" / "c.mkv"), dataset=None, language="de", speaker=None),
    ]  # the duplicate third row is dropped, the first one's labels kept


def test_parquet_with_url_column(tree: Path) -> None:
    listing = tree / "list.parquet"
    pq.write_table(pa.table({"url": ["gs://bkt/a.mp4", "b.mp4"], "speaker": ["s1", None]}), listing)
    videos = list_inputs(listing)
    assert videos == [InputVideo("gs://bkt/a.mp4", speaker="s1"), InputVideo(str(tree / "b.mp4"))]


def test_list_read_through_a_uri_keeps_its_scheme(tree: Path) -> None:
    listing = tree / "list.txt"
    listing.write_text("b.mp4\n")
    [video] = list_inputs(listing.as_uri())
    assert video.source == str(tree / "b.mp4")  # file:// lists name plain local paths


@pytest.mark.parametrize("case,message", [
    ("empty_folder", "no video files"),
    ("missing", "not found"),
    ("no_column", "no path / source / url column"),
    ("empty_list", "names no videos"),
    ("bad_parquet", "cannot read input list"),
    ("wrong_kind", "must be a folder"),
])
def test_clear_errors(tmp_path: Path, case: str, message: str) -> None:
    spec = {
        "empty_folder": tmp_path / "empty",
        "missing": tmp_path / "nothing_here",
        "no_column": tmp_path / "cols.csv",
        "empty_list": tmp_path / "empty.txt",
        "bad_parquet": tmp_path / "bad.parquet",
        "wrong_kind": tmp_path / "video.mp4",
    }[case]
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no videos")
    (tmp_path / "cols.csv").write_text("file,speaker\na.mp4,1\n")
    (tmp_path / "empty.txt").write_text("# nothing yet\n\n")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    (tmp_path / "video.mp4").write_bytes(b"x")
    with pytest.raises(InputError, match=message):
        list_inputs(spec)


def test_video_id_is_uuid5_of_normalised_uri(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "my video.mp4"
    expected = str(uuid.uuid5(uuid.NAMESPACE_URL, path.as_uri()))
    monkeypatch.chdir(tmp_path)
    assert video_id(str(path)) == expected
    assert video_id("my video.mp4") == expected                    # relative to the cwd
    assert video_id(f"file://{tmp_path}/./my video.mp4") == expected
    assert InputVideo(str(path)).video_id == expected
    assert normalise_uri("S3://bucket/a//b.mp4") == "s3://bucket/a/b.mp4"
    assert video_id("s3://bucket/a.mp4") != video_id("gs://bucket/a.mp4")


def test_clip_id_rounds_to_milliseconds() -> None:
    video = video_id("s3://bucket/talk.mp4")
    key = f"{video}:8200:16250"
    assert clip_id(video, 8.2, 16.25) == str(uuid.uuid5(uuid.NAMESPACE_URL, key))
    assert clip_id(video, 8.2001, 16.2504) == clip_id(video, 8.2, 16.25)
    assert clip_id(video, 8.2, 16.2505) != clip_id(video, 8.2, 16.25)   # rounds half up
    assert clip_id(video, 8.2, 16.25) != clip_id(video_id("s3://bucket/other.mp4"), 8.2, 16.25)


def test_content_id_follows_the_bytes_not_the_place(tmp_path: Path) -> None:
    """Moved, a file keeps its id; a change in its first 256 KiB, or in its size, gives another; a plan's recorded id wins over the content; copies in one input stay two videos."""
    from pipeline.inputs import FINGERPRINT_BYTES

    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 3 * FINGERPRINT_BYTES, dtype=np.uint8).tobytes()
    a, b = tmp_path / "data" / "a.mp4", tmp_path / "mnt" / "deep" / "a.mp4"
    for path in (a, b):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    assert content_id(str(a)) == content_id(str(b)) == content_id(a.as_uri())
    assert content_id(str(a)) != video_id(str(a))
    for changed in (b"?" + data[1:], data[:FINGERPRINT_BYTES - 1] + b"?" + data[FINGERPRINT_BYTES:], data + b"!"):
        (tmp_path / "c.mp4").write_bytes(changed)
        assert content_id(str(tmp_path / "c.mp4")) != content_id(str(a))
    small = tmp_path / "small.mp4"
    small.write_bytes(b"tiny")
    assert content_id(str(small)) == str(uuid.uuid5(uuid.NAMESPACE_URL,
                                                    f"content:4:{hashlib.sha256(b'tiny').hexdigest()}"))
    with pytest.raises(InputError, match="cannot read"):
        content_id(str(tmp_path / "missing.mp4"))

    videos = identify([InputVideo(str(b), dataset="copy"), InputVideo(str(a)), InputVideo(str(small))],
                      {normalise_uri(str(small)): "recorded-id"})
    copy = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{content_id(str(a))}:copy:1"))
    # data/a.mp4 sorts before mnt/deep/a.mp4: it takes the content id, the copy the next one
    assert [(v.source, v.id) for v in videos] == [(str(b), copy), (str(a), content_id(str(a))),
                                                  (str(small), "recorded-id")]
    assert videos[1].video_id == content_id(str(a))


def test_many_identical_files_get_their_copy_ids_in_linear_time(tmp_path):
    """A dataset dump with 20,000 copies of one file: each copy's id is the next free copy number
    (a moved copy keeps the id a plan recorded), found without trying every lower number again."""
    folder = tmp_path / "dump"
    folder.mkdir()
    for i in range(20_000):
        (folder / f"v{i:05d}.mp4").write_bytes(b"the same bytes")
    videos = [InputVideo(str(p)) for p in sorted(folder.iterdir())]
    content = content_id(videos[0].source)
    taken = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{content}:copy:2"))
    moved = tmp_path / "moved.mp4"
    moved.write_bytes(b"the same bytes")
    ids = [v.id for v in identify([*videos, InputVideo(str(moved))], {normalise_uri(str(moved)): taken})]
    expected = [content] + [str(uuid.uuid5(uuid.NAMESPACE_URL, f"{content}:copy:{n}"))
                            for n in (1, *range(3, 20_001))]
    assert ids == [*expected, taken]
