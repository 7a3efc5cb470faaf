"""Sampling throughput: sampled frames per second for the gpu and cpu backends against decode-everything.

Generates drone-like clips (1080p30 H.264 ~20 Mbit/s and 2160p30 HEVC ~60 Mbit/s, keyframes every 1 s
and 2 s), then measures in one run:

* ``gpu`` backend (DALI + NVDEC) with 1, 2, 4, 8 decode streams in one process, and ``--layouts`` (streams
  in several decoding processes, DALI run shapes; skipped, with a note, without a GPU);
* ``cpu`` backend (PyAV) in keyframe and exact mode;
* baseline: PyAV decodes every frame and keeps the one nearest each second (same thread count);

and the bytes each read against the file sizes. Writes ``benchmarks/results/sampling_<machine>.json``
(``..._quick.json`` with ``--quick``) and prints a table with ratios against the baseline.

    python benchmarks/sampling_bench.py --quick          # ~1 minute on 2 CPU cores
    python benchmarks/sampling_bench.py                  # the full run: 32 videos per measurement
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import av
import numpy as np
import torch

from _gpu_monitor import UtilisationMonitor
from _results import write_json
from quadvault_dali._gc import freeze_startup_objects
from quadvault_dali.device import gpu_status
from quadvault_dali.sampling import _remux, create_sampler
from quadvault_dali.synth import SynthSpec, make_video

RESULTS = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class ClipSpec:
    name: str
    codec: str
    width: int
    height: int
    keyframe_s: float
    bit_rate: int
    duration_s: float
    #: x264's preset (``SynthSpec.x264_preset``): "veryfast" gives High profile with B-frames, as drones write
    x264_preset: str | None = None


def select_clips(specs: list[ClipSpec], names: str, extra: list[ClipSpec] | None = None) -> list[ClipSpec]:
    """The ``specs`` and ``extra`` named in the comma-separated ``names`` (all ``specs`` when empty); an unknown
    name is a ValueError."""
    wanted = set(filter(None, names.split(",")))
    known = specs + (extra or [])
    unknown = wanted - {spec.name for spec in known}
    if unknown:
        raise ValueError(f"--clips: no clip named {sorted(unknown)}; there are {[spec.name for spec in known]}")
    return [spec for spec in known if spec.name in wanted] if wanted else specs


def clip_specs(quick: bool, duration_s: float) -> list[ClipSpec]:
    if quick:
        return [ClipSpec("720p30-h264-k1", "h264", 1280, 720, 1.0, 8_000_000, 6.0),
                ClipSpec("720p30-h264-k2", "h264", 1280, 720, 2.0, 8_000_000, 6.0),
                ClipSpec("1080p30-hevc-k1", "hevc", 1920, 1080, 1.0, 20_000_000, 4.0)]
    return [ClipSpec(f"1080p30-h264-k{k}", "h264", 1920, 1080, k, 20_000_000, duration_s) for k in (1.0, 2.0)] + \
           [ClipSpec(f"2160p30-hevc-k{k}", "hevc", 3840, 2160, k, 60_000_000, duration_s) for k in (1.0, 2.0)]


def extra_clip_specs(duration_s: float) -> list[ClipSpec]:
    """Clips made and measured only when named in ``--clips`` (so leases stay comparable): 1080p H.264 High
    profile with B-frames, as drones write it (the standard 1080p clips are Constrained Baseline)."""
    return [ClipSpec(f"1080p30-h264high-k{k}", "h264", 1920, 1080, k, 20_000_000, duration_s, "veryfast")
            for k in (1.0, 2.0)]


def make_clip(work: Path, spec: ClipSpec) -> Path:
    path = work / f"{spec.name}-{spec.duration_s:g}s.mp4"
    if not path.exists():
        t0 = time.perf_counter()
        tmp = path.with_suffix(".part.mp4")
        make_video(tmp, SynthSpec(codec=spec.codec, width=spec.width, height=spec.height, fps=30.0,  # type: ignore[arg-type]
                                  duration_s=spec.duration_s, keyframe_interval_s=spec.keyframe_s,
                                  bit_rate=spec.bit_rate, style="highlight", x264_preset=spec.x264_preset))
        os.replace(tmp, path)
        print(f"  generated {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t0:.0f}s",
              file=sys.stderr)
    return path


def run_sampler(device: str, videos: list[Path], layout: tuple[int, int, bool] | None = None, processes: int = 1,
                **config: Any) -> dict[str, Any]:
    """Samples all ``videos`` once (after a warm-up); frames/s and bytes read. ``layout``: (DALI samples per
    run, pipeline threads, uncropped SPS) per decode stream instead of the sampler's defaults; ``processes``:
    decoding processes, each with ``streams`` streams (their start-up is part of the warm-up, not the
    measurement); ``config``: ``SamplerConfig`` fields (``stream_decode`` among them)."""
    attrs: dict[str, Any] = dict(zip(("clips_per_run", "decode_threads", "uncrop_sps"), layout)) if layout else {}
    if processes > 1:
        from quadvault_dali.sampling._base import _BACKENDS, _load_backends
        from quadvault_dali.sampling._processes import ProcessSampler

        _load_backends()
        sampler = ProcessSampler(_BACKENDS[device], processes=processes, attrs=attrs, **config)
    else:
        sampler = create_sampler(device, **config)
        for name, value in attrs.items():
            setattr(sampler, name, value)
    with sampler:
        return _measure(sampler, device, videos, warm_up=max(1, processes))


def _measure(sampler: Any, device: str, videos: list[Path], warm_up: int) -> dict[str, Any]:
    for _ in sampler.iter_batches(videos[:warm_up]):  # pipelines, decoder cache, page cache (each process)
        pass
    freeze_startup_objects()  # as the product's long loops do (quadvault_dali._gc)
    decoded = getattr(sampler, "decode_stats", None)  # in-process gpu backend only
    before = decoded.as_dict() if decoded is not None else None
    frames = bytes_read = 0
    errors = []
    with UtilisationMonitor(metrics=("gpu", "decoder") if device == "gpu" else (), cpu=True) as busy:
        t0 = time.perf_counter()
        for batch in sampler.iter_batches(videos):
            frames += len(batch)
            for outcome in batch.completed:
                bytes_read += outcome.bytes_read
                if outcome.error is not None:
                    errors.append(str(outcome.error))
        if device == "gpu":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    row = {"frames": frames, "seconds": round(seconds, 3), "sampled_fps": round(frames / seconds, 1),
           "bytes_read": bytes_read, "errors": errors, **busy.summary()}
    if decoded is not None and before is not None:
        after = decoded.as_dict()
        runs, samples = after["dali_runs"] - before["dali_runs"], after["dali_samples"] - before["dali_samples"]
        takes = after["takes"] - before["takes"]
        row.update(dali_runs=runs, dali_samples=samples,
                   frames_per_dali_sample=round((after["frames_returned"] - before["frames_returned"]) / samples, 2)
                   if samples else None,
                   # how the streams took work: clips queued per take (short: small samples), and the share of
                   # the streams' time spent waiting for a clip (high: the prepare side is the limit)
                   # (decoding processes report runs, samples, frames and the FFmpeg client's counts: no takes,
                   # so both None there)
                   queued_at_take_mean=round((after["queued_at_takes"] - before["queued_at_takes"]) / takes, 1)
                   if takes else None,
                   decode_wait_share=round((after["decode_wait_s"] - before["decode_wait_s"])
                                           / (seconds * sampler.config.streams), 3) if takes else None)
        if getattr(sampler.config, "decode_client", "dali") == "ffmpeg":
            # the FFmpeg client: decoders opened and drained during the row (opening an NVDEC one costs)
            row.update(decoder_opens=after["decoder_opens"] - before["decoder_opens"],
                       drains=after["drains"] - before["drains"],
                       frames_on_device=after["frames_on_device"] - before["frames_on_device"])
    if hasattr(sampler, "queued_bytes_peak"):  # host memory the queued clips held at most (``sampling._budget``)
        row["queued_mb_peak"] = round(sampler.queued_bytes_peak / 1e6, 1)
    return row


def _baseline_one(path: Path, fps: float, size: int) -> tuple[int, int]:
    """Decodes every frame with PyAV; keeps (resizes) the frame nearest each 1/fps time."""
    kept = 0
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        tb = float(stream.time_base)
        start = stream.start_time or 0
        next_t, prev = 0.0, None
        for frame in container.decode(stream):
            t = (frame.pts - start) * tb
            while t >= next_t:
                pick = prev if prev is not None and next_t - prev[1] <= t - next_t else (frame, t)
                pick[0].to_ndarray(width=size * 16 // 9, height=size, format="rgb24")
                kept += 1
                next_t += 1.0 / fps
            prev = (frame, t)
    return kept, path.stat().st_size


def joined_clip(path: Path, copies: int) -> Path:
    """``copies`` copies of the clip played one after another, as one MP4 (packets copied, timestamps moved on by
    the clip's length each time, no re-encoding): a video as long as a library's average one (the README's
    projection: 40 s) from the short clip the lease encoded, so per-video costs weigh as they would there."""
    if copies <= 1:
        return path
    out = path.with_name(f"{path.stem}-x{copies}{path.suffix}")
    if out.exists():
        return out
    tmp = out.with_suffix(".part.mp4")
    with av.open(str(path)) as src:
        stream = src.streams.video[0]
        packets = [p for p in src.demux(stream) if p.size and p.pts is not None]
        shown = sorted(p.pts for p in packets)
        gap = packets[-1].duration or (int(np.median(np.diff(shown))) if len(shown) > 1 else 1)
        step = shown[-1] - shown[0] + gap  # the last picture's own duration: copies neither overlap nor gap
        with av.open(str(tmp), "w") as dst:
            out_stream = dst.add_stream_from_template(stream)
            for k in range(copies):
                for packet in packets:
                    copy = av.Packet(bytes(packet))
                    copy.pts = packet.pts + k * step
                    copy.dts = None if packet.dts is None else packet.dts + k * step
                    copy.duration, copy.time_base = packet.duration, packet.time_base
                    copy.is_keyframe = packet.is_keyframe
                    copy.stream = out_stream
                    dst.mux(copy)
    os.replace(tmp, out)
    return out


def linked_copies(path: Path, count: int, folder: Path) -> list[Path]:
    """``count`` names for one clip (hard links: one file, one page cache). Distinct paths, because a sampler
    in processes holds one copy of a path per process at a time (it could not tell the copies' frames apart)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        link = folder / f"{path.stem}-{i:03d}{path.suffix}"
        if not link.exists():
            try:
                os.link(path, link)
            except OSError:  # a file system without hard links
                link.symlink_to(path.resolve())
        out.append(link)
    return out


#: The interpreter's thread switch interval of an ``i`` layout, and of a ``g`` one (Python's default, which the
#: product keeps: on the H200, 0.5 ms cost a quarter of the frames/s once clips were joined, 2026-11-26).
SHORT_SWITCH_MS = 0.5
PYTHON_SWITCH_MS = 5.0
#: An ``e`` layout's fewest frames per spread sample: two 8-s videos' keyframes
SPREAD_MIN_FRAMES = 16


class Layout(NamedTuple):
    processes: int
    streams: int
    per_run: int  # DALI samples per run of one stream's pipeline
    threads: int  # that pipeline's threads
    uncrop: bool  # H.264/HEVC clips without their SPS cropping (``sampling._uncrop``)
    streamed: bool  # the streaming decoder (``sampling._stream_decoder``)
    switch_ms: float | None = None  # ``sys.setswitchinterval`` for the row, in ms (None: as it is)
    pyav_mux: bool = False  # every clip muxed by PyAV, none joined (``sampling._mp4_join``)
    prepare_processes: int = 0  # clips cut in worker processes (``sampling._prepare_pool``), 0: threads
    feed_without_copy: bool = True  # DALI reads the fed clips in place (``_clip_decoder.FEED_WITHOUT_COPY``)
    budget_samples: int | None = None  # samples the card's memory is shared by when sizing samples (None: default)
    spread_min_frames: int | None = None  # a run's clips spread over its samples, each at least this many frames
    decode_client: str = "dali"  # what decodes: DALI, or FFmpeg's NVDEC decoders (``SamplerConfig.decode_client``)
    nvdec_path: str = "hwaccel"  # how the FFmpeg client reaches NVDEC (``_ffmpeg_decoder.NVDEC_PATH``)
    low_delay: bool = False  # its cuvid decoders with NVDEC's display delay 0 (``_ffmpeg_decoder.LOW_DELAY``)


def parse_layout(text: str) -> Layout:
    """``4p2x4x4`` -> (processes 4, streams 2, samples per run 4, threads 4, uncropped SPS True, streamed False);
    ``2x8x8`` is one process; a trailing ``c`` keeps H.264/HEVC clips cropped (``4x4x4c``: DALI's decoder cache
    missing on 1080p H.264, the A/B for ``sampling._uncrop``); a trailing ``s`` decodes with the streaming
    decoder (``sampling._stream_decoder``: one decoder set-up per long merged clip; "samples per run" are then
    its sequences of 16 frames); a trailing ``i`` runs the row with a ``SHORT_SWITCH_MS`` switch interval (in
    this process) and ``g`` with Python's 5 ms (the product's, explicitly): whether prepare and decode threads lose time waiting for the GIL a busy thread holds for
    Python's default 5 ms (a convoy: each FFmpeg read through a Python file, each return from DALI, waits); a
    trailing ``m`` muxes every clip with PyAV, as before in-order clips were joined (``sampling._mp4_join``); a
    trailing ``w`` cuts clips in as many worker processes as there are prepare threads (``sampling._prepare_pool``);
    DALI reads the fed clips in place (``_clip_decoder.FEED_WITHOUT_COPY``, the default since stop 21; a trailing
    ``n`` says so, ``y`` copies them as before); a trailing ``b``
    sizes samples from the card's memory as 4 streams would (``SamplerConfig.budget_samples``), not shrinking them
    as streams are added; a trailing ``e`` spreads each run's clips evenly over its samples, at least
    ``SPREAD_MIN_FRAMES`` frames each (``SamplerConfig.spread_min_frames``), instead of filling the first; a
    trailing ``f`` decodes with FFmpeg's decoders on NVDEC instead of DALI (``SamplerConfig.decode_client``: one per
    stream and set-up, fed every video's packets; samples per run and threads then mean nothing) through its
    hwaccel, ``fc`` through its cuvid decoders (``_ffmpeg_decoder.NVDEC_PATH``), and ``fcd`` those with NVDEC's
    display delay 0 (``_ffmpeg_decoder.LOW_DELAY``)."""
    match = re.fullmatch(r"(?:(\d+)p)?(\d+)x(\d+)x(\d+)(c?)(s?)([ig]?)(m?)(w?)([ny]?)(b?)(e?)(f?c?d?)", text.strip())
    if not match or match.group(13) not in ("", "f", "fc", "fcd"):
        raise ValueError(f"a layout is [PROCESSESp]STREAMSxSAMPLES_PER_RUNxTHREADS[c][s][i|g][m][w][n|y][b][e][f[c[d]]], "
                         f"like 4p2x4x4; got {text!r}")
    processes, streams, per_run, threads = (int(g) if g else 1 for g in match.groups()[:4])
    if processes > 1 and (match.group(8) or match.group(9) or match.group(10)):
        raise ValueError(f"{text!r}: 'm', 'w', 'n' and 'y' are for one decoding process")
    return Layout(processes, streams, per_run, threads, not match.group(5), bool(match.group(6)),
                  {"i": SHORT_SWITCH_MS, "g": PYTHON_SWITCH_MS}.get(match.group(7)), bool(match.group(8)),
                  max(4, streams) if match.group(9) else 0, match.group(10) != "y",
                  4 * per_run if match.group(11) else None, SPREAD_MIN_FRAMES if match.group(12) else None,
                  "ffmpeg" if match.group(13) else "dali", "cuvid" if "c" in match.group(13) else "hwaccel",
                  match.group(13) == "fcd")


@contextlib.contextmanager
def switch_interval(ms: float | None) -> Iterator[None]:
    """The interpreter's thread switch interval set to ``ms`` inside (unchanged for ``None``)."""
    if ms is None:
        yield
        return
    before = sys.getswitchinterval()
    sys.setswitchinterval(ms / 1000)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


@contextlib.contextmanager
def feeding_without_copy(on: bool) -> Iterator[None]:
    """DALI reads the fed clips in place inside (``on``), or copies them: pipelines built meanwhile take the flag."""
    from quadvault_dali.sampling import _clip_decoder

    before = _clip_decoder.FEED_WITHOUT_COPY
    _clip_decoder.FEED_WITHOUT_COPY = on
    try:
        yield
    finally:
        _clip_decoder.FEED_WITHOUT_COPY = before


@contextlib.contextmanager
def ffmpeg_nvdec(path: str, low_delay: bool) -> Iterator[None]:
    """The FFmpeg client reaching NVDEC through ``path`` inside, its cuvid decoders with display delay 0 if
    ``low_delay``."""
    from quadvault_dali.sampling import _ffmpeg_decoder

    before = _ffmpeg_decoder.NVDEC_PATH, _ffmpeg_decoder.LOW_DELAY
    _ffmpeg_decoder.NVDEC_PATH, _ffmpeg_decoder.LOW_DELAY = path, low_delay or before[1]
    try:
        yield
    finally:
        _ffmpeg_decoder.NVDEC_PATH, _ffmpeg_decoder.LOW_DELAY = before


@contextlib.contextmanager
def pyav_muxing(on: bool) -> Iterator[None]:
    """Every clip muxed by PyAV inside (``on``), as before in-order clips were joined; children of a process
    layout inherit it only where they are forked, so a process row with ``m`` is refused."""
    if not on:
        yield
        return
    _remux.JOIN_IN_ORDER = False
    try:
        yield
    finally:
        _remux.JOIN_IN_ORDER = True


def try_sampler(device: str, videos: list[Path], **config: Any) -> dict[str, Any]:
    """``run_sampler``, but a configuration that fails is a row saying why, not the end of the benchmark:
    on a time-limited GPU lease the other rows still count."""
    try:
        return run_sampler(device, videos, **config)
    except Exception as exc:  # noqa: BLE001 - reported in the row
        print(f"  measurement failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return {"frames": 0, "seconds": 0.0, "sampled_fps": 0.0, "bytes_read": 0,
                "errors": [f"measurement failed: {type(exc).__name__}: {exc}"]}


def run_baseline(videos: list[Path], workers: int, fps: float, size: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        done = list(pool.map(lambda p: _baseline_one(p, fps, size), videos))
    seconds = time.perf_counter() - t0
    frames = sum(k for k, _ in done)
    return {"frames": frames, "seconds": round(seconds, 3), "sampled_fps": round(frames / seconds, 1),
            "bytes_read": sum(b for _, b in done), "errors": []}


def machine() -> dict[str, Any]:
    cpu_model = platform.processor() or None
    try:
        text = Path("/proc/cpuinfo").read_text()
        found = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
        cpu_model = found.group(1).strip() if found else cpu_model
    except OSError:
        pass
    usable, _ = gpu_status()
    return {"gpu": torch.cuda.get_device_name(0) if usable else None, "cpu_model": cpu_model,
            "cpu_count": os.cpu_count(), "platform": platform.platform(),
            # NVIDIA MPS's pipe folder where a run was started under its daemon: decoding processes then share the
            # GPU at once instead of by time-slicing (the runbook's experiment; null: no MPS asked for)
            "cuda_mps_pipe_directory": os.environ.get("CUDA_MPS_PIPE_DIRECTORY")}


def versions() -> dict[str, str | None]:
    try:
        import nvidia.dali as dali

        dali_version: str | None = dali.__version__
    except ImportError:
        dali_version = None
    return {"dali": dali_version, "pyav": av.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ())))}


def slug(info: dict[str, Any]) -> str:
    name = info["gpu"] or f"cpu-{info['cpu_count']}c-{info['cpu_model'] or 'unknown'}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:60]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short 720p/1080p clips (about a minute on 2 cores)")
    ap.add_argument("--videos", type=int, default=None, help="videos per measurement (copies of each clip)")
    ap.add_argument("--cpu-videos", type=int, default=None,
                    help="videos for the cpu backend and the baseline (default: --videos; 0: no such rows); frames/s "
                         "are per frame, so fewer keep a GPU run short without changing what is measured")
    ap.add_argument("--gpu-exact-videos", type=int, default=None,
                    help="videos for the gpu exact-mode row (default: --videos; 0: none); exact mode decodes GOP "
                         "prefixes, 5-10x the keyframe rows' time")
    ap.add_argument("--duration", type=float, default=30.0, help="clip length in seconds (full run)")
    ap.add_argument("--streams", default="1,2,4,8", help="gpu decode streams to try (none: no such rows)")
    ap.add_argument("--clips", default="", help="only these clips, by name (e.g. 1080p30-h264-k1.0; default: all)")
    ap.add_argument("--layouts", default="4x4x4,4x4x4c,8x4x4,4x8x8",
                    help="more gpu keyframe rows as [PROCESSESp]STREAMSxSAMPLES_PER_RUNxTHREADS[c][s][i|g][m][w][n|y][b][e][f[c[d]]] "
                         "(streams per process; c: H.264/HEVC clips keep their SPS cropping; s: the streaming "
                         "decoder; w: clips cut in worker processes; y: DALI copies the fed clips (no copy is the "
                         "default since stop 21; the --streams rows use it too); b: samples sized as for 4 streams; "
                         "e: a run's clips spread over its samples; f: the FFmpeg decode client; the others "
                         "in parse_layout; the --streams rows are 1 process with the defaults, x4x4)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--work", type=Path, default=None, help="where generated clips are kept (reused)")
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    ap.add_argument("--join-copies", type=int, default=1,
                    help="measure videos of this many copies of each clip played one after another (stream copy, "
                         "no encoding): 5 x 8-s clips make the library's average 40-s video")
    ap.add_argument("--build-only", action="store_true",
                    help="only generate the clips into --work (a GPU lease builds them while its tests run)")
    args = ap.parse_args(argv)

    work = args.work or Path(tempfile.gettempdir()) / "quadvault-sampling-bench"
    work.mkdir(parents=True, exist_ok=True)
    if args.build_only:  # in parallel: a 12-s 2160p HEVC clip took ~110 s on one core of the H100 machine
        from concurrent.futures import ProcessPoolExecutor

        specs = clip_specs(args.quick, args.duration)
        specs += [spec for spec in extra_clip_specs(args.duration) if spec.name in args.clips.split(",")]
        with ProcessPoolExecutor(max_workers=len(specs)) as pool:
            made = list(pool.map(make_clip, [work] * len(specs), specs))
        for path in made:
            joined_clip(path, args.join_copies)
        (work / "clips.done").write_text("ok\n")
        return 0
    stream_counts = [int(s) for s in args.streams.split(",") if s.strip() not in ("", "none")]
    n_videos = args.videos or (2 if args.quick else 32)
    n_cpu_videos = min(n_videos if args.cpu_videos is None else args.cpu_videos, n_videos)
    cpu_workers = os.cpu_count() or 1
    info = machine()
    gpu_ok, gpu_reason = gpu_status()
    results: list[dict[str, Any]] = []
    notes: list[str] = []
    if not gpu_ok:
        notes.append(f"gpu backend skipped: {gpu_reason}")

    out = args.out or RESULTS / f"sampling_{slug(info)}{'_quick' if args.quick else ''}.json"

    def report(complete: bool, rows: list[dict[str, Any]] = []) -> dict[str, Any]:  # noqa: B006 - never mutated
        return {"benchmark": "sampling", "quick": args.quick, "complete": complete, "machine": info,
                "versions": versions(),
                "config": {"fps": 1.0, "size": args.size, "videos_per_measurement": n_videos,
                           "cpu_videos_per_measurement": n_cpu_videos,
                           "clip_duration_s": None if args.quick else args.duration, "cpu_workers": cpu_workers},
                "notes": notes, "results": results + rows}

    try:
        specs = select_clips(clip_specs(args.quick, args.duration), args.clips, extra_clip_specs(args.duration))
    except ValueError as exc:
        ap.error(str(exc))
    for spec in specs:
        path = joined_clip(make_clip(work, spec), args.join_copies)
        videos = linked_copies(path, n_videos, work / "copies")
        cpu_videos = videos[:n_cpu_videos]
        rows: list[dict[str, Any]] = []
        with av.open(str(path)) as container:  # x264's fast presets write Constrained Baseline (no CABAC, no
            profile = container.streams.video[0].codec_context.profile  # B-frames); drones write High

        def described(row: dict[str, Any]) -> None:
            """Adds the clip's facts to ``row`` and saves what was measured so far: a run stopped by its time
            limit keeps every row it printed."""
            size_total = path.stat().st_size * row["videos"]
            row.update(clip=spec.name, codec=spec.codec, resolution=f"{spec.width}x{spec.height}",
                       join_copies=args.join_copies, video_duration_s=spec.duration_s * args.join_copies,
                       profile=profile, keyframe_interval_s=spec.keyframe_s, file_bytes=size_total,
                       read_fraction=round(row["bytes_read"] / size_total, 3))
            _print_row(spec, row)
            write_json(out, report(False, rows))

        if gpu_ok:  # first: on a time-limited lease these are the rows that matter
            for streams in stream_counts:
                rows.append({"backend": "gpu", "mode": "keyframe", "streams": streams, "videos": n_videos,
                             **try_sampler("gpu", videos, mode="keyframe", size=args.size, streams=streams)})
                described(rows[-1])
            for layout in filter(None, args.layouts.split(",")):
                shape = parse_layout(layout)
                with switch_interval(shape.switch_ms), pyav_muxing(shape.pyav_mux), \
                        feeding_without_copy(shape.feed_without_copy), \
                        ffmpeg_nvdec(shape.nvdec_path, shape.low_delay):
                    measured = try_sampler("gpu", videos, layout=(shape.per_run, shape.threads, shape.uncrop),
                                           processes=shape.processes, mode="keyframe", size=args.size,
                                           streams=shape.streams, stream_decode=shape.streamed,
                                           prepare_processes=shape.prepare_processes,
                                           spread_min_frames=shape.spread_min_frames,
                                           budget_samples=shape.budget_samples, decode_client=shape.decode_client)
                rows.append({"backend": "gpu", "mode": "keyframe", "streams": shape.streams * shape.processes,
                             "layout": layout, "processes": shape.processes, "videos": n_videos,
                             "uncrop_sps": shape.uncrop, "stream_decode": shape.streamed, "pyav_mux": shape.pyav_mux,
                             "prepare_processes": shape.prepare_processes, "feed_without_copy": shape.feed_without_copy,
                             "budget_samples": shape.budget_samples, "spread_min_frames": shape.spread_min_frames,
                             "decode_client": shape.decode_client, "nvdec_path": shape.nvdec_path,
                             "low_delay": shape.low_delay,
                             "switch_interval_ms": shape.switch_ms or 1000 * sys.getswitchinterval(), **measured})
                described(rows[-1])
            exact_videos = videos[:n_videos if args.gpu_exact_videos is None else args.gpu_exact_videos]
            if exact_videos:  # --gpu-exact-videos 0: no exact row
                streams = max(stream_counts, default=4)
                rows.append({"backend": "gpu", "mode": "exact", "streams": streams, "videos": len(exact_videos),
                             **try_sampler("gpu", exact_videos, mode="exact", size=args.size, streams=streams)})
                described(rows[-1])
        base: dict[str, Any] = {}
        if cpu_videos:  # --cpu-videos 0: the gpu rows only
            base = run_baseline(cpu_videos, cpu_workers, 1.0, args.size)
            rows.append({"backend": "baseline-pyav-all-frames", "mode": "exact", "streams": cpu_workers,
                         "videos": n_cpu_videos, **base})
            described(rows[-1])
            for mode in ("keyframe", "exact"):
                rows.append({"backend": "cpu", "mode": mode, "streams": cpu_workers, "videos": n_cpu_videos,
                             **run_sampler("cpu", cpu_videos, mode=mode, size=args.size, streams=cpu_workers)})
                described(rows[-1])
        for row in rows:
            row["vs_baseline"] = round(row["sampled_fps"] / base["sampled_fps"], 2) if base.get("sampled_fps") else None
        results.extend(rows)
        write_json(out, report(False))

    write_json(out, report(True))
    print_table(results)
    print(f"\nwrote {out}" + ("".join(f"\nnote: {n}" for n in notes)))
    return 0


def _print_row(spec: ClipSpec, row: dict[str, Any]) -> None:
    print(f"  {spec.name:18} {row['backend']:25} {row['mode']:8} s={row['streams']:<2} "
          f"{row['sampled_fps']:8.1f} fps  read {row['bytes_read'] / 1e6:.1f} MB", file=sys.stderr, flush=True)


def print_table(results: list[dict[str, Any]]) -> None:
    head = f"{'clip':18} {'backend':25} {'mode':8} {'streams':>7} {'frames/s':>9} {'x base':>7} {'read':>6}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in results:
        ratio = f"{r['vs_baseline']:.2f}" if r["vs_baseline"] is not None else "-"
        err = f"  ({len(r['errors'])} errors)" if r["errors"] else ""
        print(f"{r['clip']:18} {r['backend']:25} {r['mode']:8} {r['streams']:>7} {r['sampled_fps']:>9.1f} "
              f"{ratio:>7} {r['read_fraction']:>6.0%}{err}")


if __name__ == "__main__":
    raise SystemExit(main())
