"""Shared fixtures: generated media (never committed), GPU marker handling, no-ERROR-log guard."""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

import pytest

from quadvault_dali.synth import SynthSpec, make_broken, make_video

#: The benchmark scripts: they import their shared helpers (``_results``, ``_gpu_monitor``) by name.
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def import_benchmark(name: str) -> Any:
    """A module of ``benchmarks/`` (not a package), imported with that folder on the path for the import only."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


#: Real third-party footage (``../shared/video-corpus`` beside the checkout; ``QUADVAULT_CORPUS`` elsewhere).
CORPUS = Path(os.environ.get("QUADVAULT_CORPUS") or Path(__file__).resolve().parents[2] / "shared" / "video-corpus")


def _cuda_usable() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _cuda_usable():
        return
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and os.environ.get("QUADVAULT_REQUIRE_GPU") == "1":
        # On the GPU machine a skipped GPU test would hide a broken CUDA/DALI install: fail instead.
        raise pytest.UsageError(f"QUADVAULT_REQUIRE_GPU=1 but no CUDA GPU is usable; {len(gpu_items)} gpu tests "
                                "would be skipped")
    marker = pytest.mark.skip(reason="needs a CUDA GPU (run on the GPU machine; see README)")
    for item in gpu_items:
        item.add_marker(marker)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("media")


@pytest.fixture(scope="session")
def make_clip(media_dir: Path) -> Callable[..., Path]:
    """``make_clip("name.mp4", codec="hevc", fps=25, ...)`` -> a cached generated clip. A name asked for again
    with another spec is an error: the cache would hand back the first clip (on the H100, one test's HEVC clip
    stamped with source 2 reached a test that expected 3, depending on which test ran first in its worker)."""
    made: dict[str, SynthSpec] = {}

    def make(name: str, **spec: object) -> Path:
        wanted = SynthSpec(**spec)  # type: ignore[arg-type]
        if made.setdefault(name, wanted) != wanted:
            raise ValueError(f"make_clip({name!r}) asked for {wanted}, but the cached clip was made with {made[name]}")
        path = media_dir / name
        if not path.exists():
            make_video(path, wanted)
        return path

    return make


@pytest.fixture(scope="session")
def motion_photo(media_dir: Path, make_clip: Callable[..., Path]) -> Path:
    """A phone-style file: audio (stream 0), a 2-frame 512x320 still track (source 9), then the 30-fps video
    (source 7) at file index 2 but video ordinal 1."""
    import av

    out = media_dir / "motion_photo.mp4"
    if out.exists():
        return out
    still = make_clip("mp_still.mp4", width=512, height=320, fps=1, duration_s=2.0, source_id=9, audio=True)
    video = make_clip("mp_video.mp4", width=256, height=160, fps=30, duration_s=3.0, source_id=7)
    with av.open(str(still)) as a, av.open(str(video)) as b, av.open(str(out), "w") as dst:
        sources = [a.streams.audio[0], a.streams.video[0], b.streams.video[0]]
        copies = {id(src): dst.add_stream_from_template(src) for src in sources}
        for container, streams in ((a, sources[:2]), (b, sources[2:])):
            for packet in container.demux(*streams):
                if packet.dts is not None:
                    packet.stream = copies[id(packet.stream)]
                    dst.mux(packet)
    return out


@pytest.fixture(scope="session")
def broken_clips(media_dir: Path, make_clip: Callable[..., Path]) -> dict[str, Path]:
    """One damaged file of each kind a real library has."""
    good = make_clip("broken_source.mp4", duration_s=3.0)
    out = media_dir / "broken"
    return {
        "empty": make_broken(out / "empty.mp4", "empty"),
        "text": make_broken(out / "notes.mp4", "text"),
        "truncated": make_broken(out / "truncated.mp4", "truncated", source=good),
        "no_index": make_broken(out / "no_index.mp4", "no_index", source=good),
    }


@pytest.fixture(scope="session")
def header_variants(media_dir: Path) -> list[Path]:
    """H.264 MP4s whose SPS and track header disagree (``_media.h264_header_variants``)."""
    from _media import h264_header_variants

    return h264_header_variants(media_dir / "header_variants")


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.skip(f"shared video corpus not found at {CORPUS}")
    return CORPUS
