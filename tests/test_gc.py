"""Long jobs keep what startup built out of the cyclic garbage collector's passes (see quadvault_dali._gc)."""

from __future__ import annotations

import gc
import weakref

import pytest

import quadvault_dali._gc as qgc


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_startup_objects_are_frozen_once_and_new_garbage_is_still_collected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(qgc, "_frozen", False)
    survivor = _Node()
    qgc.freeze_startup_objects()
    frozen = gc.get_freeze_count()
    assert frozen > 0
    assert not gc.is_tracked(survivor) or not any(survivor is o for o in gc.get_objects(generation=2))
    qgc.freeze_startup_objects()  # the second call is a no-op: the objects of later jobs stay collectable
    assert gc.get_freeze_count() == frozen
    a, b = _Node(), _Node()
    a.other, b.other = b, a  # a reference cycle made after the freeze
    gone = weakref.ref(a)
    del a, b
    gc.collect()
    assert gone() is None


def test_a_scan_freezes_before_it_scores_the_first_frame(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The scan's sampling loop starts with the startup objects frozen (the scorers are loaded by then)."""
    from _scan_helpers import WarmScorer
    from quadvault_dali.scan.runner import ScanOptions, scan_library
    from quadvault_dali.synth import SynthSpec, make_video

    events: list[str] = []
    real_freeze = qgc.freeze_startup_objects
    monkeypatch.setattr(qgc, "_frozen", False)

    def freeze() -> None:
        events.append("freeze")
        real_freeze()

    class Recording(WarmScorer):
        def score_frames(self, frames):  # type: ignore[no-untyped-def]
            events.append("score")
            return super().score_frames(frames)

    import quadvault_dali.scan.runner as runner

    monkeypatch.setattr(runner, "freeze_startup_objects", freeze)
    make_video(tmp_path / "lib" / "a.mp4", SynthSpec(width=64, height=64, fps=10, duration_s=2.0))
    scan_library([tmp_path / "lib"], ScanOptions(out_dir=tmp_path / "out", device="cpu", streams=1),
                 scorers=[Recording()])
    assert events[0] == "freeze" and "score" in events and gc.get_freeze_count() > 0
