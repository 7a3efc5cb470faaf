"""Trimmed exports and re-encoded copies of one footage: found by their pictures, kept on one side of the split."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from quadvault_dali.dataset import prepare_dataset, read_dataset
from quadvault_dali.dataset._shared_footage import (SharedFootage, frame_fingerprint, join_groups, same_picture,
                                                    shared_footage)
from quadvault_dali.synth import _scene

from _media import export_copy

CLIP = dict(width=192, height=108, fps=10, stamp=False, keyframe_interval_s=1.0)


def _jpeg(tmp_path: Path, name: str, image: np.ndarray, quality: int = 90) -> Path:
    path = tmp_path / name
    Image.fromarray(image).save(path, quality=quality)
    return path


def test_a_frame_keeps_its_fingerprint_through_reencoding_and_grading_and_others_do_not_share_it(
        tmp_path: Path) -> None:
    scene = _scene("highlight", 2.0, 144, 256, 3)
    original = frame_fingerprint(_jpeg(tmp_path, "a.jpg", scene))
    assert len(original) == 32
    small = np.asarray(Image.fromarray(scene).resize((96, 54), Image.Resampling.BILINEAR))
    assert same_picture(original, frame_fingerprint(_jpeg(tmp_path, "b.jpg", small, quality=30)))
    for gain in (0.8, 1.2):  # brighter clips the reds
        graded = np.clip(scene.astype(np.float32) * gain, 0, 255).astype(np.uint8)
        assert same_picture(original, frame_fingerprint(_jpeg(tmp_path, f"g{gain}.jpg", graded)))
    for seed in (4, 5, 11):  # other scenes of the style: its colours, another gradient
        other = frame_fingerprint(_jpeg(tmp_path, f"o{seed}.jpg", _scene("highlight", 2.0, 144, 256, seed)))
        assert not same_picture(original, other)
    flat = np.full((144, 256, 3), 90, np.uint8)
    assert frame_fingerprint(_jpeg(tmp_path, "sky.jpg", flat)) == b""  # too flat to tell apart: never matched


def _random_prints(count: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, 16, dtype=np.uint8).tobytes() + bytes([0xFF] * 16) for _ in range(count)]


def _flip(fingerprint: bytes, bits: int, seed: int) -> bytes:
    """``fingerprint`` with ``bits`` of its signs flipped."""
    words = np.frombuffer(fingerprint, np.uint8).copy()
    for bit in np.random.default_rng(seed).choice(128, bits, replace=False):
        words[bit // 8] ^= 1 << (bit % 8)
    return words.tobytes()


def test_a_trimmed_copy_is_found_with_its_offset_and_look_alike_frames_are_not_a_copy() -> None:
    flight = _random_prints(20, 1)
    export = [(float(t), _flip(flight[t + 7], 5, t)) for t in range(6)]  # seconds 7-12 of the flight, re-encoded
    assert same_picture(flight[7], export[0][1]) and not same_picture(flight[7], _flip(flight[7], 12, 0))
    other = _random_prints(20, 2)
    other[3], other[15] = flight[3], flight[9]  # two look-alike frames (sky, sea) at unrelated times
    shuffled = [(float(t), flight[(t * 7) % 20]) for t in range(20)]  # the same pictures in another order
    pairs = shared_footage({"flight": [(float(t), f) for t, f in enumerate(flight)], "export": export,
                            "other": [(float(t), f) for t, f in enumerate(other)], "shuffled": shuffled})
    assert pairs == [SharedFootage("flight", "export", 6, 7.0)]
    assert shared_footage({"a": [(0.0, flight[0]), (1.0, flight[1])], "b": [(0.0, flight[0]), (1.0, flight[1])]}) \
        == []  # two frames are too few to call anything a copy
    assert shared_footage({"a": [(float(t), b"") for t in range(5)], "b": [(float(t), b"") for t in range(5)]}) == []
    weak = [f[:16] + bytes(16) for f in flight]  # no step strong enough to trust: nothing to compare
    assert shared_footage({"a": list(enumerate(weak)), "b": list(enumerate(weak))}) == []


def test_two_cuts_of_one_hovering_shot_look_alike_at_every_offset_and_are_not_called_one_footage() -> None:
    """A fixed hover over a match, cut into 0-8 s and 12-20 s: every frame of one matches every frame of the other,
    so no offset stands out; they are grouped (near-identical views) but not called a copy with an offset (a
    real-footage check found the 'labelled both ways; keep one' warning telling a pilot to drop half the labels)."""
    hover = _random_prints(1, 3)[0]
    first = [(float(t), _flip(hover, 2, t)) for t in range(8)]
    second = [(float(t), _flip(hover, 2, 100 + t)) for t in range(8)]
    (pair,) = shared_footage({"first": first, "second": second})
    assert not pair.aligned and pair.frames == 8
    flight = _random_prints(20, 1)
    (trim,) = shared_footage({"flight": [(float(t), f) for t, f in enumerate(flight)],
                              "export": [(float(t), flight[t + 7]) for t in range(6)]})
    assert trim.aligned and trim.offset_s == 7.0


def test_groups_join_across_pairs_and_recordings() -> None:
    groups = {"a": "a", "b": "a", "c": "c", "d": "d", "e": "e"}  # a and b: chunks of one recording
    joined = join_groups(groups, [SharedFootage("b", "c", 4, 0.0), SharedFootage("d", "c", 3, 1.0)])
    assert joined["a"] == joined["b"] == joined["c"] == joined["d"] and joined["e"] == "e"


def _library(tmp_path: Path, make_clip: Callable[..., Path]) -> tuple[Path, list[Path], list[Path]]:
    lib = tmp_path / "lib"
    lib.mkdir()
    highlights, normal = [], []
    for i in range(12):
        for style, into in (("highlight", highlights), ("normal", normal)):
            name = f"{style}_{i:02d}.mp4"
            into.append(Path(shutil.copy(make_clip(f"sf_{name}", style=style, duration_s=6.0, seed=i, **CLIP),
                                         lib / name)))
    return lib, highlights, normal


def test_exports_of_a_labelled_clip_share_its_split_and_opposite_labels_are_warned(
        tmp_path: Path, make_clip: Callable[..., Path], caplog: pytest.LogCaptureFixture) -> None:
    """A trimmed, rescaled export of a highlight, a vertical 9:16 cut of another, and a small, low-quality copy of a
    third labelled normal: all are found, each sits on its source's side of the split, and the opposite labels are named in a
    warning. (A brightened copy of real drone footage is found too: karma.mp4 x1.2 in 0-2 bits; the synthetic
    scenes' saturated reds clip and lose their steps.)"""
    lib, highlights, normal = _library(tmp_path, make_clip)
    exports = tmp_path / "exports"
    exports.mkdir()
    trimmed = export_copy(highlights[1], exports / "best_bit.mp4", start_s=2.0, width=128, height=72, crf=34)
    regraded = export_copy(highlights[4], exports / "graded.mp4", width=128, height=72, crf=38)
    vertical = export_copy(highlights[7], exports / "reel_9x16.mp4", start_s=1.0, width=54, height=96,
                           crop_aspect=9 / 16)  # for the phone: the centre of the shot, upright
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"highlights": [str(p) for p in highlights + [trimmed, vertical]],
                                  "normal": [str(p) for p in normal + [regraded]]}))
    with caplog.at_level(logging.INFO, logger="quadvault_dali"):
        result = prepare_dataset(labels, tmp_path / "ds", size=64, device="cpu")
    named = [r.getMessage() for r in caplog.records if "sampled frames alike" in r.getMessage()]  # which, not only how many
    assert len(named) == 3 and any(str(highlights[1]) in m and str(trimmed) in m for m in named), named

    table = read_dataset(tmp_path / "ds").table.to_pylist()
    split_of = {Path(r["video_path"]).name: r["split"] for r in table}
    id_of = {Path(r["video_path"]).name: r["video_id"] for r in table}
    found = {frozenset((p.a, p.b)): p for p in result.shared_footage}
    assert set(found) == {frozenset((id_of["highlight_01.mp4"], id_of["best_bit.mp4"])),
                          frozenset((id_of["highlight_04.mp4"], id_of["graded.mp4"])),
                          frozenset((id_of["highlight_07.mp4"], id_of["reel_9x16.mp4"]))}
    assert split_of["reel_9x16.mp4"] == split_of["highlight_07.mp4"]
    trim = found[frozenset((id_of["highlight_01.mp4"], id_of["best_bit.mp4"]))]
    assert trim.frames >= 3 and abs(abs(trim.offset_s) - 2.0) <= 1.0
    assert split_of["best_bit.mp4"] == split_of["highlight_01.mp4"]
    assert split_of["graded.mp4"] == split_of["highlight_04.mp4"]
    assert {s for s in split_of.values()} == {"train", "val", "test"}
    conflicts = [w for w in result.warnings if "labelled both ways" in w]
    assert len(conflicts) == 1 and "highlight_04.mp4 (highlight)" in conflicts[0] and "graded.mp4 (normal)" in conflicts[0]
    assert all(len(r["frame_fingerprint"]) in (0, 32) for r in table)


def test_a_match_on_few_frames_is_a_question_not_an_order_to_drop_a_label() -> None:
    """Two short clips of smooth, textureless scenes matched on 3 frames (a review's distinct synthetic clips), and
    the warning told the pilot to drop one of two good labels. Few frames alike now ask to check instead."""
    from types import SimpleNamespace

    from quadvault_dali.dataset._prepare import SURE_MATCH_FRAMES, _footage_warnings

    by_id = {"a": SimpleNamespace(path=Path("/f/sunset.mp4"), label=1, label_name="highlight"),
             "b": SimpleNamespace(path=Path("/f/sky.mp4"), label=0, label_name="normal")}
    [few] = _footage_warnings([SharedFootage("a", "b", 3, 0.0)], by_id, {})
    [sure] = _footage_warnings([SharedFootage("a", "b", SURE_MATCH_FRAMES, 0.0)], by_id, {})
    assert "may show the same footage (only 3 sampled frames alike" in few and "if one is a copy" in few
    assert "show the same footage (5 sampled frames): those frames are labelled both ways; keep one" in sure
