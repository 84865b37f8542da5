"""Speaker labels read from where the videos are: ``split.speaker_pattern``.

Face identity cannot keep every person on one side of the split at tens of thousands of people
(``docs/identity.md``), but most published sets say who speaks in their paths: VoxCeleb2's
``dev/mp4/id00012/21Uxsk56VDQ/00001.mp4`` (pattern ``^(id\\d+)/``), HDTF's
``WDA_BarackObama_000.mp4`` (``^[A-Z]+_([A-Za-z]+)_``), a folder per person in one's own footage
(``^([^/]+)/``). The pattern is searched (``re.search``) in each video's path relative to the input
root (the folder given, or the folder holding the list; a source outside it is matched as given),
so it does not depend on where the data lives. The label is the group named ``speaker``, else
the first group, else the whole match. A speaker the list gives is kept; a video the pattern
does not match keeps its face identity, and the run says how many did not.
"""
from __future__ import annotations

import logging
import posixpath
import re
from dataclasses import asdict, dataclass, replace
from urllib.parse import unquote

import pyarrow.fs as pafs

from pipeline.inputs import InputError, InputVideo, filesystem_for, normalise_uri

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SpeakerCounts:
    """How the pattern labelled a run's videos (recorded in run.json)."""

    pattern: str
    matched: int     # videos labelled from their path
    listed: int      # videos the input list already labelled (kept)
    unmatched: int   # videos the pattern did not match (face identity decides their group)


def compile_pattern(pattern: object) -> re.Pattern[str]:
    if not isinstance(pattern, str):  # e.g. an unquoted "a: b" on the command line is read as a mapping
        raise InputError(f"split.speaker_pattern must be a string, got {pattern!r}; quote it")
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise InputError(f"split.speaker_pattern {pattern!r} is not a regular expression: {exc}") from exc


def input_root(spec: str) -> str:
    """The normalised URI that paths are matched relative to: the folder, or the list's folder."""
    fs, path = filesystem_for(spec)
    uri = normalise_uri(spec).rstrip("/")
    return uri if fs.get_file_info(path).type == pafs.FileType.Directory else posixpath.dirname(uri)


def relative_path(source: str, root: str) -> str:
    """``source`` relative to ``root`` (both sides normalised), or the normalised source when it
    lies outside the root."""
    uri = normalise_uri(source)
    path = uri[len(root) + 1:] if uri.startswith(root + "/") else uri
    return unquote(path) if uri.startswith("file://") else path  # local URIs are percent-encoded


def speaker_of(path: str, pattern: re.Pattern[str]) -> str | None:
    match = pattern.search(path)
    if match is None:
        return None
    if "speaker" in pattern.groupindex:
        label = match.group("speaker")
    else:
        label = match.group(1) if pattern.groups else match.group(0)
    return label or None


def label_speakers(videos: list[InputVideo], pattern: str | None,
                   spec: str) -> tuple[list[InputVideo], SpeakerCounts | None]:
    """``videos`` (listed from the input ``spec``) with speakers from ``pattern`` (None: unchanged),
    and how many it labelled. Raises ``InputError`` for a bad pattern or one that labels nothing."""
    if not pattern:
        return videos, None
    regex = compile_pattern(pattern)
    root = input_root(spec)
    labelled, unmatched_examples = [], []
    matched = listed = unmatched = 0
    for video in videos:
        if video.speaker:
            listed += 1
        else:
            path = relative_path(video.source, root)
            speaker = speaker_of(path, regex)
            if speaker is None:
                unmatched += 1
                if len(unmatched_examples) < 3:
                    unmatched_examples.append(path)
            else:
                matched += 1
                video = replace(video, speaker=speaker)
        labelled.append(video)
    counts = SpeakerCounts(pattern, matched, listed, unmatched)
    log.info("split.speaker_pattern %r: %d videos labelled from their path, %d labelled by the list, "
             "%d not matched", pattern, matched, listed, unmatched)
    if unmatched:
        log.warning("split.speaker_pattern %r matched no speaker in %d of %d videos (e.g. %s); their "
                    "split follows face identity", pattern, unmatched, len(videos), ", ".join(unmatched_examples))
    if videos and not matched and not listed:
        raise InputError(f"split.speaker_pattern {pattern!r} matched none of the {len(videos)} input videos' "
                         f"paths (relative to {root}; e.g. {', '.join(unmatched_examples)})")
    return labelled, counts
