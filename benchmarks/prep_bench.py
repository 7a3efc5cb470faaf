"""The CPU ceiling of the gpu backend: how many frames/s its Python side can feed, with no decoding at all.

The gpu backend probes, plans and cuts every video into in-memory clips (``_remux``), merges short ones
into shared DALI samples and hands frames over in order, in threads of one Python process. Whatever NVDEC
can do, sampling cannot run faster than that machinery. This runs ``DaliSampler.iter_batches`` with the
DALI decoder replaced by one that only takes each sample's bytes (as feeding DALI does) and returns blank
frames, over hard-linked copies of the sampling benchmark's clips, and reports sampled frames/s and the
process's CPU milliseconds per frame. Needs no GPU; the numbers are those of the machine's CPU.

    python benchmarks/prep_bench.py --quick                 # ~1 minute on 2 cores
    python benchmarks/prep_bench.py --videos 200 --duration 8
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _results import write_json
from quadvault_dali import probe
from quadvault_dali._gc import freeze_startup_objects
from quadvault_dali.sampling import _gpu, _remux
from quadvault_dali.sampling._clip_decoder import ClipDecoder
from quadvault_dali.sampling._ffmpeg_decoder import FfmpegDecoder
from quadvault_dali.sampling._remux import Clip
from sampling_bench import (clip_specs, extra_clip_specs, linked_copies, machine, make_clip, select_clips, slug,
                            versions)

RESULTS = Path(__file__).resolve().parent / "results"


#: (seconds per sample, seconds per frame) the null decoder waits without the GIL, as DALI's decoder takes them
#: (``--dali-costs``): with none it empties the queue at once and short videos' clips are never merged
DALI_COSTS: tuple[float, float] | None = None


class NullDecoder(ClipDecoder):
    """Takes each sample's bytes and region like ``feed_clips`` and returns blank frames: no DALI at all."""

    def decode(self, clips: list[Clip]) -> list[torch.Tensor | Exception]:
        out: list[torch.Tensor | Exception] = []
        for clip in clips:
            np.frombuffer(clip.data, dtype=np.uint8)
            np.array(clip.roi, dtype=np.float32)
            out.append(torch.zeros((len(clip), 3, self.size, self.size), dtype=torch.uint8))
        self.stats.add(len(clips), sum(len(c) for c in clips))  # as a DALI run counts its samples
        if DALI_COSTS is not None:
            time.sleep(len(clips) * DALI_COSTS[0] + sum(len(c) for c in clips) * DALI_COSTS[1])
        return out

    def close(self) -> None:
        pass


class NullFfmpegDecoder(FfmpegDecoder):
    """The FFmpeg client's place in the machinery with no decoding: each clip's packets are walked as feeding
    them does, and blank frames come back at once."""

    def feed(self, key: Any, clip: Clip, info: Any) -> list[tuple[Any, torch.Tensor | Exception]]:
        for run in clip.runs:
            for packet in run.packets:
                len(packet.data)
        return [(key, torch.zeros((len(clip), 3, self.size, self.size), dtype=torch.uint8))]

    def drain(self, end: bool = False) -> list[tuple[Any, torch.Tensor | Exception]]:
        return []


class PrepOnlySampler(_gpu.DaliSampler):
    """The gpu backend's machinery on H.264/HEVC with the null decoder (any codec passes the limitation check)."""

    decoder_name = "null"

    def __init__(self, uncrop: bool = True, **config: Any) -> None:
        super().__init__(**config)
        self.uncrop_sps = uncrop

    def _limitation(self, info: Any) -> str | None:
        return None

    def _clip_decoder(self) -> ClipDecoder:
        cfg = self.config
        return NullDecoder("cpu", None, cfg.size, cfg.square, self.clips_per_run, num_threads=self.decode_threads,
                           stats=self.decode_stats)

    def _ffmpeg_decoder(self) -> FfmpegDecoder:
        cfg = self.config
        return NullFfmpegDecoder(self.device, cfg.size, cfg.square, hardware=False, stats=self.decode_stats)


class GcPauses:
    """Time the cyclic garbage collector stopped every Python thread, per generation, while active."""

    def __init__(self) -> None:
        self.ms = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.ms[info["generation"]] += 1000 * (time.perf_counter() - self._t0)
            self.count[info["generation"]] += 1

    def __enter__(self) -> "GcPauses":
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def measure(videos: list[Path], streams: int, size: int, repeats: int, mode: str = "keyframe",
            muxers: tuple[str, ...] = ("join", "pyav"), preparers: tuple[str, ...] = ("threads",),
            probes: tuple[str, ...] = ("quick",)) -> list[dict[str, Any]]:
    """Rows for uncropped and cropped clips, each with every muxer in ``muxers`` (``join``: in-order clips
    joined under a rebuilt index, ``pyav``: every clip muxed by PyAV, ``packets``: no MP4, the packets handed to
    the FFmpeg decode client, ``SamplerConfig.decode_client``; it never uncrops): the median of ``repeats`` passes each
    over ``videos``, the settings' passes interleaved (and their order alternated) so that a drifting machine
    favours none. ``preparers``: ``threads`` (the default) and/or ``processes`` (clips cut in as many worker
    processes as prepare threads, ``sampling._prepare_pool``; their start-up is not timed)."""
    # workers are spawned: the PyAV-mux switch (a global of this process) does not reach them
    # ``probes``: ``quick`` (FFmpeg's stream probing cut short for plain MP4s, ``probe.QUICK_MP4_PROBE``, the
    # default) and/or ``full``; a switch of this process, so ``full`` rows cut clips in threads
    settings = [(uncrop, mux, prep, how) for uncrop in (True, False) for mux in muxers for prep in preparers
                for how in probes
                if not (mux == "pyav" and prep == "processes") and not (mux == "packets" and uncrop)
                and not (how == "full" and prep == "processes")]
    workers = max(4, streams)
    samplers = {(uncrop, prep, client): PrepOnlySampler(uncrop=uncrop, mode=mode, size=size, streams=streams,
                                                        prepare_processes=workers if prep == "processes" else 0,
                                                        decode_client=client)
                for uncrop in (True, False) for prep in preparers
                for client in (("dali", "ffmpeg") if "packets" in muxers and not uncrop else ("dali",))}
    for sampler in samplers.values():
        for _ in sampler.iter_batches(videos[:2]):  # imports, first-use costs, templates
            pass
    freeze_startup_objects()  # as the product's long loops do
    passes: dict[tuple[bool, str, str, str], list[tuple[float, float, int, GcPauses, float]]] = {key: [] for key in settings}
    for r in range(repeats):
        for uncrop, mux, prep, how in (settings if r % 2 == 0 else settings[::-1]):
            frames = 0
            _remux.JOIN_IN_ORDER = mux == "join"
            probe.QUICK_MP4_PROBE = how == "quick"
            try:
                sampler = samplers[(uncrop, prep, "ffmpeg" if mux == "packets" else "dali")]
                sampler.decode_stats.take()  # zeroed: this pass's samples only
                with GcPauses() as pauses:
                    wall0, cpu0 = time.perf_counter(), time.process_time()
                    for batch in sampler.iter_batches(videos):
                        frames += len(batch)
                    counts = sampler.decode_stats.take()
                    samples, sample_frames = counts["samples"], counts["frames"]
                    passes[(uncrop, mux, prep, how)].append((time.perf_counter() - wall0, time.process_time() - cpu0,
                                                        frames, pauses, sample_frames / max(1, samples)))
            finally:
                _remux.JOIN_IN_ORDER = True
                probe.QUICK_MP4_PROBE = True
    for sampler in samplers.values():
        sampler.close()
    rows = []
    for (uncrop, mux, prep, how), runs in passes.items():
        wall, cpu, frames, pauses, per_sample = sorted(runs, key=lambda p: p[0])[len(runs) // 2]
        # CPU ms per frame: this process's own (a "processes" row's workers are not in process_time)
        rows.append({"mode": mode, "streams": streams, "uncrop_sps": uncrop, "mux": mux, "prepare": prep, "probe": how,
                     "videos": len(videos),
                     "frames": frames, "repeats": repeats, "seconds": round(wall, 3),
                     "sampled_fps": round(frames / wall, 1), "cpu_ms_per_frame": round(1000 * cpu / max(frames, 1), 3),
                     "gc_pause_ms": [round(ms, 1) for ms in pauses.ms], "gc_collections": pauses.count,
                     "frames_per_sample": round(per_sample, 1) if mux != "packets" else None,
                     "dali_costs_ms": [1000 * c for c in DALI_COSTS] if DALI_COSTS is not None else None})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="96 copies of 4-s clips")
    ap.add_argument("--videos", type=int, default=None, help="copies of each clip per measurement")
    ap.add_argument("--duration", type=float, default=8.0, help="clip length in seconds")
    ap.add_argument("--streams", default="1,4", help="decode streams (threads) to try")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=3, help="passes per row; the median is reported")
    ap.add_argument("--work", type=Path, default=None, help="where generated clips are kept (shared with sampling_bench)")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--clips", default="", help="only these clips, by name (e.g. 2160p30-hevc-k1.0; default: all)")
    ap.add_argument("--mux", default="join,pyav", help="muxers to compare: join (in-order clips joined under a "
                    "rebuilt index, the default), pyav (every clip muxed by PyAV, as before), packets (no MP4: "
                    "the FFmpeg decode client's clips)")
    ap.add_argument("--prepare", default="threads", help="where clips are cut: threads (the default), processes "
                    "(worker processes, sampling._prepare_pool), or both to compare")
    ap.add_argument("--probe", default="quick", help="how plain MP4s are opened: quick (FFmpeg's stream probing cut "
                    "short, the default), full (as before), or both to compare")
    ap.add_argument("--dali-costs", default="", help="ms per sample,ms per frame the null decoder waits as DALI's "
                    "decoder takes them, so queues fill and short clips merge as on a GPU (e.g. 10,0.35: the H200's "
                    "measured costs); default: none")
    ap.add_argument("--modes", default="keyframe", help="sampling modes to try: keyframe, exact (GOP runs cut by demuxing)")
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.gettempdir()) / "quadvault-sampling-bench"
    duration = 4.0 if args.quick else args.duration
    n_videos = args.videos or (96 if args.quick else 200)
    # the sampling benchmark's clips (same names: a GPU lease builds them once for both), less 2160p k2
    specs = [c for c in clip_specs(False, duration) if c.codec == "h264" or c.keyframe_s == 1.0]
    try:
        specs = select_clips(specs, args.clips, extra_clip_specs(duration))
    except ValueError as exc:
        ap.error(str(exc))
    preparers = tuple(filter(None, args.prepare.split(",")))
    if not preparers or set(preparers) - {"threads", "processes"}:
        ap.error(f"--prepare takes threads and/or processes, got {args.prepare!r}")
    probes = tuple(filter(None, args.probe.split(",")))
    if not probes or set(probes) - {"quick", "full"}:
        ap.error(f"--probe takes quick and/or full, got {args.probe!r}")
    muxers = tuple(filter(None, args.mux.split(",")))
    if not muxers or set(muxers) - {"join", "pyav", "packets"}:
        ap.error(f"--mux takes join, pyav and/or packets, got {args.mux!r}")
    if args.dali_costs:
        try:
            per_sample, per_frame = (float(v) / 1000 for v in args.dali_costs.split(","))
        except ValueError:
            ap.error(f"--dali-costs takes two numbers (ms per sample,ms per frame), got {args.dali_costs!r}")
        global DALI_COSTS
        DALI_COSTS = per_sample, per_frame
    info = machine()
    info["gpu"] = None  # measured on the CPU whatever the machine has
    out = args.out or RESULTS / f"prep_{slug(info)}{'_quick' if args.quick else ''}.json"
    results: list[dict[str, Any]] = []
    doc = {"benchmark": "prep", "quick": args.quick, "machine": info, "versions": versions(),
           "config": {"videos_per_measurement": n_videos, "clip_duration_s": duration, "modes": args.modes.split(","),
                      "size": args.size, "cpu_count": os.cpu_count()},
           "results": results}
    warmed = False
    for spec in specs:
        path = make_clip(work, spec)
        videos = linked_copies(path, n_videos, work / "copies")
        if not warmed:  # the process's first pass ran ~25 % slower whatever it measured: not a row
            measure(videos[: min(24, n_videos)], 1, args.size, 1)
            warmed = True
        for mode in args.modes.split(","):
            for streams in (int(s) for s in args.streams.split(",")):
                for measured in measure(videos, streams, args.size, args.repeats, mode, muxers, preparers, probes):
                    row = {"clip": spec.name, "codec": spec.codec, **measured}
                    uncrop = row["uncrop_sps"]
                    results.append(row)
                    print(f"  {spec.name:18} {mode:8} streams={streams} uncrop={uncrop!s:5} mux={row['mux']:4} {row['prepare']:9} {row['probe']:5} "
                          f"{row['sampled_fps']:8.1f} frames/s {row['cpu_ms_per_frame']:.3f} CPU ms/frame "
                          f"{row['frames_per_sample'] or 0:.1f} frames/sample",
                          file=sys.stderr, flush=True)
                    write_json(out, doc)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
