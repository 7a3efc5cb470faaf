"""The byte budget of the gpu backend's queued clips: host memory stays bounded however fast the preparers are."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable

import pytest

from quadvault_dali.sampling import _gpu, create_sampler
from quadvault_dali.sampling._budget import (MAX_QUEUED_BYTES, MIN_QUEUED_BYTES, ByteBudget, clip_bytes,
                                            queued_bytes_for)
from quadvault_dali.sampling._gpu import DaliSampler
from quadvault_dali.synth import read_stamp

SIZE = 64


def test_budget_waits_for_room_and_lets_one_large_item_through_alone() -> None:
    budget = ByteBudget(100)
    assert budget.acquire(60) and budget.acquire(40)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(budget.acquire(30)))
    waiter.start()
    time.sleep(0.2)
    assert waiter.is_alive() and budget.held == 100  # full: the third waits
    budget.release(40)
    waiter.join(5)
    assert got == [True] and budget.held == 90
    budget.release(60)
    budget.release(30)
    assert budget.acquire(500) and budget.held == 500  # larger than the limit: admitted when nothing else is held
    assert budget.peak == 500


def test_closing_the_budget_wakes_a_waiting_thread() -> None:
    budget = ByteBudget(10)
    assert budget.acquire(10)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(budget.acquire(5)))
    waiter.start()
    time.sleep(0.1)
    budget.close()
    waiter.join(5)
    assert got == [False] and budget.held == 10


def test_budget_follows_the_machines_memory_and_the_samplers_share() -> None:
    gib = 1 << 30
    assert queued_bytes_for(1.0, ram=256 * gib) == MAX_QUEUED_BYTES
    assert queued_bytes_for(1.0, ram=8 * gib) == gib  # an eighth of a laptop's memory
    assert queued_bytes_for(0.25, ram=256 * gib) == MAX_QUEUED_BYTES // 4  # one of 4 processes
    assert queued_bytes_for(0.01, ram=gib) == MIN_QUEUED_BYTES


@pytest.fixture(scope="module")
def vp9_videos(make_clip: Callable[..., Path]) -> list[tuple[Path, int]]:
    return [(make_clip(f"budget_vp9_{sid}.mp4", codec="vp9", width=128, height=80, fps=30, duration_s=4.0,
                       keyframe_interval_s=1.0, source_id=sid), sid) for sid in range(61, 65)]


def _run(sampler: DaliSampler, videos: list[Path], monkeypatch: pytest.MonkeyPatch
         ) -> tuple[dict[Path, list[float]], dict[Path, list], list[int]]:
    costs: list[int] = []

    def counted(clip):  # type: ignore[no-untyped-def]
        costs.append(clip_bytes(clip))
        return costs[-1]

    monkeypatch.setattr(_gpu, "clip_bytes", counted)
    times: dict[Path, list[float]] = {}
    stamps: dict[Path, list] = {}
    for batch in sampler.iter_batches(videos):
        assert all(o.ok for o in batch.completed), batch.completed
        for path, t, frame in zip(batch.paths, batch.timestamps, batch.frames.numpy()):
            times.setdefault(path, []).append(t)
            stamps.setdefault(path, []).append(read_stamp(frame))
    return times, stamps, costs


@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_a_budget_smaller_than_one_clip_still_samples_every_second(vp9_videos: list[tuple[Path, int]],
                                                                   monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """With room for one clip at a time, clips queue one by one: the same frames, and never more held."""
    sampler = DaliSampler(mode=mode, size=SIZE, streams=2)
    sampler.queued_bytes_limit = 1
    videos = [p for p, _ in vp9_videos]
    times, stamps, costs = _run(sampler, videos, monkeypatch)
    cpu = create_sampler("cpu", mode=mode, size=SIZE)
    for path, sid in vp9_videos:
        assert times[path] == pytest.approx(cpu.sample_video(path)[1], abs=1e-6)
        assert all(s is not None and abs(s.time_s - t) < 0.006 and s.source_id == sid
                   for s, t in zip(stamps[path], times[path]))
    assert len(costs) >= len(videos) and min(costs) > 0
    assert sampler.queued_bytes_peak == max(costs)  # one clip at a time


def test_the_default_budget_holds_the_queue(vp9_videos: list[tuple[Path, int]],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    sampler = DaliSampler(mode="keyframe", size=SIZE, streams=2, memory_share=0.5)
    times, _, costs = _run(sampler, [p for p, _ in vp9_videos], monkeypatch)
    assert sum(len(t) for t in times.values()) == 4 * len(vp9_videos)
    assert max(costs) <= sampler.queued_bytes_peak <= min(sum(costs), queued_bytes_for(0.5))
