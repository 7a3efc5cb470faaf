"""Scan benchmark: is the scan faster than reading the library? How much faster than the CPU and a naive decoder?

Builds a synthetic library (default 200 videos of 10-60 s, half 1080p30 H.264 at ~16 Mbit/s, half 2160p30
HEVC at ~45 Mbit/s, keyframe every 1-2 s), then, each time with the files evicted from the page cache:

* ``cat``: reading every file start to end (what any full pass over the disk costs);
* ``scan``: ``scan_library`` on the chosen device (GPU where there is one), 1 frame/s, a 224 px model;
* ``cpu``: the same scan with the CPU backend, on a subset, extrapolated per video-second;
* ``naive``: decoding every frame - one DALI pipeline (``fn.experimental.readers.video``) on the GPU,
  PyAV on the CPU - on a subset, extrapolated per frame.

Encoding hundreds of long 4K clips would take hours, so a few short masters per format are encoded and
stream-copied (remuxed, keyframes intact) into files of the wanted lengths. Results go to
``benchmarks/results/scan_<device>[_quick].json`` with the machine and library versions.

    python benchmarks/scan_bench.py --quick          # a tiny run, under a minute on a laptop CPU
    python benchmarks/scan_bench.py --work /scratch  # the full run (on the GPU machine)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import shutil
import socket
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from unittest import mock

import av

from _gpu_monitor import UtilisationMonitor
from _results import write_json
from quadvault_dali._lifetime import signal_name
from quadvault_dali.device import resolve_device
from quadvault_dali.sampling import _remux
from quadvault_dali.synth import SynthSpec, make_video

RESULTS = Path(__file__).resolve().parent / "results"
# (name, codec, width, height, bit rate) - realistic drone bit rates
FORMATS_FULL = [("1080p30_h264", "h264", 1920, 1080, 16_000_000), ("2160p30_hevc", "hevc", 3840, 2160, 45_000_000)]
FORMATS_QUICK = [("180p30_h264", "h264", 320, 180, 600_000), ("360p30_hevc", "hevc", 640, 360, 1_200_000)]


def remux_repeat(src: Path, dst: Path, seconds: float) -> None:
    """Writes ``dst``: ``src`` stream-copied back to back until it lasts ``seconds`` (no re-encoding)."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        s_in = inp.streams.video[0]
        s_out = out.add_stream_from_template(s_in)
        packets = [p for p in inp.demux(s_in) if p.dts is not None and p.size]
        tb = s_in.time_base
        step = max(p.pts for p in packets) + (packets[1].dts - packets[0].dts)
        length = float(step * tb)
        rounds = max(1, int(round(seconds / length)))
        for r in range(rounds):
            for p in packets:
                q = av.Packet(bytes(p))
                q.pts, q.dts, q.time_base, q.stream = p.pts + r * step, p.dts + r * step, tb, s_out
                q.is_keyframe = p.is_keyframe
                out.mux(q)


def _make_master(path: Path, spec: SynthSpec) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(f"{path.stem}.part{path.suffix}")  # an interrupted build is never reused
    make_video(part, spec)
    os.replace(part, path)


def build_library(root: Path, videos: int, formats: list, durations: tuple[float, float], master_s: float,
                  seed: int = 0) -> list[Path]:
    rng = random.Random(seed)
    masters, todo = {}, []
    for name, codec, w, h, rate in formats:
        for gop in (1.0, 2.0):
            m = root / "_masters" / f"{name}_gop{gop:g}.mp4"
            if not m.exists():
                todo.append((m, SynthSpec(codec=codec, width=w, height=h, fps=30, duration_s=master_s,
                                          keyframe_interval_s=gop, bit_rate=rate, style="highlight",
                                          seed=len(masters))))
            masters[(name, gop)] = m
    if todo:  # in parallel: a 10-s 2160p HEVC master took ~90 s on one core of the H100 machine
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=len(todo)) as pool:
            list(pool.map(_make_master, *zip(*todo)))
    files = []
    for i in range(videos):
        name = formats[i % len(formats)][0]
        gop = rng.choice((1.0, 2.0))
        dst = root / "library" / f"{i // 50:02d}" / f"{name}_{i:04d}.mp4"
        dst.parent.mkdir(parents=True, exist_ok=True)
        seconds = rng.uniform(*durations)  # drawn for every file, so a rebuilt library is the same library
        if not dst.exists():
            part = dst.with_name(f"{dst.stem}.part{dst.suffix}")
            remux_repeat(masters[(name, gop)], part, seconds)
            os.replace(part, dst)
        files.append(dst)
    return files


def evict(files: list[Path]) -> str:
    """Drops the files from the page cache: globally where allowed, else per file (fadvise)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return "drop_caches"
    except OSError:
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
        return "fadvise_dontneed"


def cat_read(files: list[Path]) -> float:
    started = time.perf_counter()
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.read(8 << 20):
                pass
    return time.perf_counter() - started


#: The interpreter's switch interval of an ``i`` scan layout, and of a ``g`` one (Python's default, the product's)
SHORT_SWITCH_MS = 0.5
PYTHON_SWITCH_MS = 5.0


#: An ``e`` scan layout's fewest frames per spread DALI sample, and a ``b`` one's samples the card's memory is
#: divided by (4 streams x 4 samples per run: the default's)
SPREAD_MIN_FRAMES = 16
BUDGET_SAMPLES = 16


def parse_scan_layout(text: str) -> tuple[int, int, str, bool, float | None, bool, int, bool, int | None, int | None,
                                          str]:
    """``PROCESSESxSTREAMS[k][s][i][m][w][f]`` -> (processes, streams, sampling mode, streaming decoder, switch
    interval in ms, PyAV muxing, prepare worker processes, full exact runs): ``k`` scans in keyframe mode (else
    auto), ``s`` with the experimental streaming decoder (``SamplerConfig.stream_decode``), ``i`` with a
    ``SHORT_SWITCH_MS`` GIL switch interval in this process (``g``: Python's 5 ms, explicitly) (the scan's own
    thread scores frames beside the prepare and decode threads: a GIL convoy shows here), ``m`` with every
    clip muxed by PyAV as before in-order clips were joined, ``w`` with clips cut in max(4, STREAMS) worker
    processes (``sampling._prepare_pool``; their start-up, ~1-2 s, is in the wall time), ``f`` with exact runs
    decoding every picture up to the wanted one, as before unreferenced ones were left out
    (``_remux.SKIP_UNREFERENCED``). ``m`` and ``f`` set module flags, so one decoding process only; ``w``
    too. Then (spread_min_frames, budget_samples): ``e`` spreads a DALI run's clips over its samples
    (``SamplerConfig.spread_min_frames``), ``b`` sizes samples as the default 4 streams do
    (``SamplerConfig.budget_samples``). Last the decode client: ``v`` decodes with FFmpeg's NVDEC decoders
    through PyAV instead of DALI (``SamplerConfig.decode_client``)."""
    match = re.fullmatch(r"(\d+)x(\d+)(k?)(s?)([ig]?)(m?)(w?)(f?)(e?)(b?)(v?)", text.strip())
    if not match or ((match.group(6) or match.group(7) or match.group(8)) and int(match.group(1)) > 1):
        raise ValueError(f"a scan layout is PROCESSESxSTREAMS[k][s][i|g][m][w][f][e][b][v] ('m', 'w', 'f' with one "
                         f"process), like 4x2 or 2x4k; got {text!r}")
    streams = int(match.group(2))
    return (int(match.group(1)), streams, "keyframe" if match.group(3) else "auto", bool(match.group(4)),
            {"i": SHORT_SWITCH_MS, "g": PYTHON_SWITCH_MS}.get(match.group(5)), bool(match.group(6)),
            max(4, streams) if match.group(7) else 0, bool(match.group(8)),
            SPREAD_MIN_FRAMES if match.group(9) else None, BUDGET_SAMPLES if match.group(10) else None,
            "ffmpeg" if match.group(11) else "dali")


#: Environments a scan layout's row may run under (``1x8k+pool0``): the experiments that tell the causes of DALI's
#: intermittent ``CUDA_ERROR_ILLEGAL_ADDRESS`` apart (DEVELOPERS.md "DALI's illegal address"). DALI 2.4 returns a
#: decoder's frame buffers to its shared pool right after an asynchronous copy out of them, unsynchronised;
#: ``pool0`` makes it ``cudaMalloc``/``cudaFree`` (the free waits for the device), ``novmm`` keeps the pool but never
#: unmaps, ``async`` uses CUDA's stream-ordered allocator (its free's ordering not checked; not with the first two),
#: ``torchnocache`` stops PyTorch reusing freed memory (a
#: fault on its side that DALI only reports), ``blocking`` serialises every launch (stop 25: no crash under it).
ROW_ENVS: dict[str, dict[str, str]] = {
    "pool0": {"DALI_USE_DEVICE_MEM_POOL": "0"},
    "novmm": {"DALI_USE_VMM": "0"},
    "async": {"DALI_USE_CUDA_MALLOC_ASYNC": "1"},
    "torchnocache": {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"},
    "blocking": {"CUDA_LAUNCH_BLOCKING": "1"},
}


def parse_row_env(text: str) -> tuple[str, dict[str, str]]:
    """``1x8k+pool0+torchnocache`` -> (``1x8k``, the environment of ``ROW_ENVS`` those names set for its row)."""
    layout, *names = text.strip().split("+")
    env: dict[str, str] = {}
    for name in names:
        if name not in ROW_ENVS:
            raise ValueError(f"{text!r}: unknown row environment {name!r}; known: {', '.join(ROW_ENVS)}")
        env.update(ROW_ENVS[name])
    if {"pool0", "async"} <= set(names) or {"novmm", "async"} <= set(names):  # DALI refuses these pairs at start
        raise ValueError(f"{text!r}: DALI_USE_CUDA_MALLOC_ASYNC cannot be used with DALI_USE_DEVICE_MEM_POOL=0 or "
                         "DALI_USE_VMM=0")
    return layout, env


def row_environment() -> dict[str, str | None]:
    """The value of every ``ROW_ENVS`` variable this process has now: a row's record, so a variable the shell
    exported for the whole call (``CUDA_LAUNCH_BLOCKING=1``) is not taken for the row's own."""
    return {name: os.environ.get(name) for env in ROW_ENVS.values() for name in env}


def run_scan(files: list[Path], out: Path, device: str, model_dir: Path, streams: int, batch: int,
             mode: str = "auto", processes: int = 1, stream_decode: bool = False, prepare_processes: int = 0,
             spread_min_frames: int | None = None, budget_samples: int | None = None,
             decode_client: str = "dali") -> dict:
    from quadvault_dali.scan.runner import ScanOptions, scan_library

    import torch

    from quadvault_dali.device import torch_device
    from quadvault_dali.model import load_model

    shutil.rmtree(out, ignore_errors=True)
    model = load_model(model_dir, device=torch_device(resolve_device(device)))
    model.score_frames(torch.zeros((batch, 3, 224, 224), dtype=torch.uint8))  # warm-up, not timed
    with UtilisationMonitor(metrics=("gpu", "decoder") if resolve_device(device) == "gpu" else (), cpu=True) as busy:
        started_at = datetime.now(timezone.utc)
        started = time.perf_counter()
        summary = scan_library(files, ScanOptions(out_dir=out, device=device, streams=streams, batch_size=batch,
                                                  resume=False, mode=mode, processes=processes,
                                                  stream_decode=stream_decode, prepare_processes=prepare_processes,
                                                  spread_min_frames=spread_min_frames,
                                                  budget_samples=budget_samples, decode_client=decode_client),
                               scorers=[model])
        wall = time.perf_counter() - started
    run = summary.run
    return {"device": resolve_device(device), "sampling": mode, "processes": processes, "streams": streams,
            "stream_decode": stream_decode, "prepare_processes": prepare_processes, "decode_client": decode_client,
            "videos": run.videos, "errors": run.errors, "wall_s": round(wall, 3),
            "videos_per_s": round(run.videos / wall, 3), "video_seconds_per_s": round(run.video_seconds / wall, 2),
            "sampled_frames": run.frames, "sampled_frames_per_s": round(run.frames / wall, 2),
            "library_mb_per_s": round(run.file_bytes / wall / 1e6, 2),
            "bytes_read": run.bytes_read, "file_bytes": run.file_bytes,
            "bytes_read_fraction": round(run.bytes_read / max(run.file_bytes, 1), 4),
            "video_seconds": round(run.video_seconds, 2),
            "frames_per_dali_sample": round(run.dali_frames / run.dali_samples, 2) if run.dali_samples else None,
            # the share of the decode streams' time spent waiting for a prepared clip (in-process gpu backend)
            # (in-process only: decoding processes do not report their streams' waits)
            "decode_wait_share": round(run.dali_wait_s / (wall * streams), 3)
            if run.dali_samples and processes == 1 else None,
            **completion_profile(out, started_at, wall),
            # seconds from the call's start to each milestone (discovery, resume plan, sampler, first batch...)
            "phases": summary.phases,
            **busy.summary()}


#: The share of the library's bytes at whose completion the steady-state window opens, and closes
STEADY_WINDOW = (0.1, 0.9)


def completion_profile(out: Path, started_at: datetime, wall: float) -> dict:
    """When the scan's videos finished, from their rows' ``scanned_at``: the start-up (until the first video's row)
    and the library bytes per second between STEADY_WINDOW's shares of the bytes done. A 200-video scan takes a
    few seconds, of which starting pipelines, models and worker processes are a large part; an 18,000-video scan
    pays them once, so its time against ``cat`` follows the steady rate, not the whole wall time."""
    import pyarrow.dataset as ds

    table = ds.dataset(out / "videos", format="parquet").to_table(columns=["scanned_at", "size_bytes"])
    rows = sorted(zip(table.column("scanned_at").to_pylist(), table.column("size_bytes").to_pylist()))
    if len(rows) < 10:
        return {}
    total = sum(size for _, size in rows)
    done, marks = 0, []
    for when, size in rows:
        done += size
        while len(marks) < len(STEADY_WINDOW) and done >= STEADY_WINDOW[len(marks)] * total:
            marks.append((when - started_at).total_seconds())
    span = marks[1] - marks[0]
    if span <= 0:
        return {}
    last = (rows[-1][0] - started_at).total_seconds()
    return {"first_video_s": round((rows[0][0] - started_at).total_seconds(), 3),
            # after the last row: shards flushed, highlights.json, pipelines and workers shut down
            "last_video_s": round(last, 3), "after_last_video_s": round(wall - last, 3),
            "steady_window_s": [round(m, 3) for m in marks],
            "steady_mb_per_s": round((STEADY_WINDOW[1] - STEADY_WINDOW[0]) * total / span / 1e6, 2),
            "scan_wall_at_steady_rate_s": round(span / (STEADY_WINDOW[1] - STEADY_WINDOW[0]), 3)}


#: Imported before a fresh process's row is timed, as a row in a process that had scanned before found them
WARM_IMPORTS = ("quadvault_dali.scan.runner", "quadvault_dali.sampling._cpu", "quadvault_dali.sampling._gpu",
                "quadvault_dali.sampling._ffmpeg_decoder", "pyarrow.parquet", "av")


def _scan_in_child(send: Any, flags: dict, args: tuple, kw: dict) -> None:
    import importlib

    for name in WARM_IMPORTS:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional backend (DALI) missing: the scan says so itself
            pass
    sys.setswitchinterval(flags["switch_s"])
    _remux.JOIN_IN_ORDER, _remux.SKIP_UNREFERENCED = flags["join_in_order"], flags["skip_unreferenced"]
    try:
        send.send(("ok", run_scan(*args, **kw)))
    except BaseException as exc:  # noqa: BLE001 - reported in the parent's row
        send.send(("error", f"{type(exc).__name__}: {exc}"))


def run_scan_isolated(*args: Any, env: dict[str, str] | None = None, **kw: Any) -> dict:
    """``run_scan`` in a fresh process with this one's module flags (and ``env`` added to its environment): a
    native abort (stop 25: DALI's ``CUDA_ERROR_ILLEGAL_ADDRESS`` ended two of three scan calls on an H200 and every
    row after it) costs that row, recorded as a crash, not the rest of the lease's rows."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    flags = {"switch_s": sys.getswitchinterval(), "join_in_order": _remux.JOIN_IN_ORDER,
             "skip_unreferenced": _remux.SKIP_UNREFERENCED}
    proc = ctx.Process(target=_scan_in_child, args=(send, flags, args, kw), name="scan-bench-row")
    with mock.patch.dict(os.environ, env or {}):  # a spawned child starts with this process's environment as it is
        proc.start()
    send.close()
    try:
        kind, value = receive.recv()
    except EOFError:
        proc.join()
        code = proc.exitcode or 0
        how = signal_name(-code) if code < 0 else f"exit code {code}"
        raise RuntimeError(f"the scan process died ({how})") from None
    proc.join()
    if kind == "error":
        raise RuntimeError(value)
    return value


def naive_decode(files: list[Path], backend: str) -> dict:
    """Decodes every frame: one DALI GPU pipeline, or PyAV on the CPU."""
    started = time.perf_counter()
    frames = 0
    utilisation: dict[str, float] = {}
    if backend == "gpu":
        from nvidia.dali import fn, pipeline_def

        @pipeline_def(batch_size=1, num_threads=4, device_id=0)
        def decode_all():  # the baseline users would write first: every frame, in order
            return fn.experimental.readers.video(device="gpu", filenames=[str(f) for f in files],
                                                 sequence_length=30, step=30, name="reader")

        pipe = decode_all()
        pipe.build()
        with UtilisationMonitor(metrics=("gpu", "decoder")) as busy:
            for _ in range(pipe.epoch_size("reader")):
                (video,) = pipe.run()
                frames += int(video.as_tensor().shape()[1])
        utilisation = busy.summary()
        tool = "DALI fn.experimental.readers.video (gpu), batch 1, sequences of 30"
    else:
        for f in files:
            with av.open(str(f)) as c:
                c.streams.video[0].thread_type = "AUTO"
                frames += sum(1 for _ in c.decode(video=0))
        tool = "PyAV decode every frame, frame threads"
    wall = time.perf_counter() - started
    return {"tool": tool, "videos": len(files), "frames": frames, "wall_s": round(wall, 3),
            "frames_per_s": round(frames / wall, 2), **utilisation}


def machine_info(backend: str) -> dict:
    import torch

    info = {"host": socket.gethostname(), "platform": platform.platform(), "python": sys.version.split()[0],
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "pyav": av.__version__}
    try:
        import nvidia.dali as dali
        info["dali"] = dali.__version__
    except ImportError:
        info["dali"] = None
    info["gpu"] = torch.cuda.get_device_name(0) if backend == "gpu" else None
    return info


def make_model(work: Path) -> Path:
    import torch

    from quadvault_dali.model import build_network, save_model

    torch.manual_seed(0)
    net = build_network("efficientnet-lite0", image_size=224, pretrained="none").eval()
    return save_model(work / "model", net, {"architecture": "efficientnet-lite0", "image_size": 224, "name": "bench"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 tiny videos: checks the benchmark runs")
    ap.add_argument("--videos", type=int, default=200)
    ap.add_argument("--device", default="auto", choices=["auto", "gpu", "cpu"])
    ap.add_argument("--cpu-videos", type=int, default=None,
                    help="subset for the CPU backend scan (default: one per CPU core, so every core has a video)")
    ap.add_argument("--naive-videos", type=int, default=6, help="subset for the decode-every-frame baseline")
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--layouts", default="",
                    help="more gpu scans as PROCESSESxSTREAMS[k][s][i|g][m][w][f][e][b][v][+ENV...], e.g. 4x2 or "
                         "2x4k or 1x8k+pool0 (decoding "
                         "processes, streams in each; k: keyframe mode, else auto; s: the experimental streaming "
                         "decoder; i: a short GIL switch interval (0.5 ms), g: Python's 5 ms; m: every clip muxed by "
                         "PyAV; w: clips cut in worker processes; f: exact runs decode unreferenced pictures too; e: a "
                         "DALI run's clips spread over its samples; b: samples sized as for 4 streams; v: FFmpeg's "
                         "decode client; +ENV: the row's process runs with ROW_ENVS[ENV] set, one of "
                         f"{', '.join(ROW_ENVS)}). "
                         "Their wall time includes starting the processes")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--work", type=Path, default=None, help="where the library is built (needs ~30 GB full)")
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    ap.add_argument("--in-process", action="store_true",
                    help="run every scan in this process (default: each in a fresh one, so a crash costs one row)")
    ap.add_argument("--build-only", action="store_true",
                    help="build the library in --work and stop (a later run with the same --work reuses it)")
    args = ap.parse_args()
    try:  # a typo must stop the run now, not after the main scans
        layouts = [(text, env, *parse_scan_layout(base)) for text in filter(None, args.layouts.split(","))
                   for base, env in [parse_row_env(text)]]
    except ValueError as exc:
        ap.error(str(exc))
    if args.in_process and any(env for _, env, *_ in layouts):
        ap.error("a layout's +environment needs its row in a fresh process: drop --in-process")
    backend = resolve_device(args.device)
    formats = FORMATS_QUICK if args.quick else FORMATS_FULL
    videos, durations, master_s = (6, (2.0, 4.0), 2.0) if args.quick else (args.videos, (10.0, 60.0), 10.0)
    work = args.work or Path(tempfile.mkdtemp(prefix="scan_bench_"))
    t0 = time.perf_counter()
    files = build_library(work, videos, formats, durations, master_s)
    build_s = time.perf_counter() - t0
    if args.build_only:
        (work / "library.done").write_text(f"{len(files)} videos in {build_s:.1f}s\n")
        print(f"built {len(files)} videos in {work} in {build_s:.1f}s")
        return
    lib_bytes = sum(f.stat().st_size for f in files)
    model = make_model(work)
    result: dict = {"benchmark": "scan", "quick": args.quick,
                    "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "machine": machine_info(backend),
                    "library": {"videos": len(files), "bytes": lib_bytes, "formats": [f[0] for f in formats],
                                "durations_s": list(durations), "keyframe_interval_s": [1.0, 2.0],
                                "build_s": round(build_s, 1)}}
    out = args.out or RESULTS / f"scan_{backend}{'_quick' if args.quick else ''}.json"

    def save() -> None:  # after every measurement: a run stopped by its time limit keeps what it measured
        write_json(out, result)

    def attempt(name: str, measure: Any) -> Any:
        """One optional measurement; its failure is recorded, not fatal to the others."""
        try:
            return measure()
        except Exception as exc:  # noqa: BLE001 - reported in the result
            print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            return {"error": f"{type(exc).__name__}: {exc}"}

    scan = run_scan if args.in_process else run_scan_isolated
    result["cache"] = evict(files)
    cat_s = cat_read(files)
    result["cat_read"] = {"wall_s": round(cat_s, 3), "mb_per_s": round(lib_bytes / cat_s / 1e6, 2)}

    def library_scan(out_name: str, streams: int = args.streams, **kw: Any) -> dict:
        """A scan of the whole library from a cold cache, timed against reading it."""
        evict(files)
        res = scan(files, work / out_name, backend, model, streams, args.batch_size, **kw)
        res["vs_cat_read"] = round(res["wall_s"] / cat_s, 3)
        if "scan_wall_at_steady_rate_s" in res:  # what an 18,000-video library's scan would take against cat
            res["steady_vs_cat_read"] = round(res["scan_wall_at_steady_rate_s"] / cat_s, 3)
        return res

    result["scan"] = attempt("scan", lambda: library_scan("scan_out"))
    save()
    if args.quick:
        result["note"] = ("--quick: 6 tiny clips to check the benchmark runs; fixed costs dominate, so these "
                          "numbers say nothing about throughput")
    # `auto` samples the 2-s-GOP half of the library exactly (GOP prefixes: ~15 decoded frames per sampled
    # one); keyframe mode takes the nearest keyframe instead (error <= 1 s, one frame per keyframe)
    result["scan_keyframe"] = attempt("keyframe scan", lambda: library_scan("scan_key_out", mode="keyframe"))
    save()
    if backend == "gpu":
        def cpu_scan(mode: str, gpu_row: str) -> dict:
            # One video per core, each core decoding one: 6 videos on 16 cores (the first H100 run) measured
            # the slowest video's tail, not the CPU backend.
            cores = os.cpu_count() or 1
            subset = files[: args.cpu_videos or cores]
            evict(subset)
            cpu = scan(subset, work / "cpu_out", "cpu", model, cores, args.batch_size, mode=mode)
            if "error" not in result[gpu_row]:
                cpu["extrapolated_wall_s"] = round(result[gpu_row]["video_seconds"] / cpu["video_seconds_per_s"], 1)
            return cpu

        # the GPU against the CPU in the same sampling mode: auto (the default) and keyframe (the fast scan;
        # the CPU backend skips to keyframes too, so keyframe GPU against auto CPU would flatter the GPU)
        for cpu_key, gpu_row, mode in (("cpu_backend", "scan", "auto"), ("cpu_backend_keyframe", "scan_keyframe",
                                                                          "keyframe")):
            result[cpu_key] = attempt(f"CPU backend scan ({mode})", lambda: cpu_scan(mode, gpu_row))
            if "error" not in result[cpu_key] and "error" not in result[gpu_row]:
                result["gpu_speedup_vs_cpu" + ("" if mode == "auto" else "_keyframe")] = round(
                    result[gpu_row]["video_seconds_per_s"] / result[cpu_key]["video_seconds_per_s"], 2)
            save()
    else:
        result["cpu_backend"] = "same as scan (no GPU on this machine)"
    save()

    def naive_baseline() -> dict:
        subset = files[: args.naive_videos]
        evict(subset)
        naive = naive_decode(subset, backend)
        total_frames = 0
        for f in files:
            with av.open(str(f)) as c:
                total_frames += c.streams.video[0].frames
        naive["extrapolated_wall_s"] = round(total_frames / naive["frames_per_s"], 1)
        return naive

    result["naive_baseline"] = attempt("naive baseline", naive_baseline)
    if "error" not in result["naive_baseline"] and "error" not in result["scan"]:
        result["scan_speedup_vs_naive"] = round(result["naive_baseline"]["extrapolated_wall_s"]
                                                / result["scan"]["wall_s"], 2)
    save()
    # the extra layouts last: a lease's step cut by its time limit still has the CPU and naive rows the targets
    # are read against (stop 31 ran seven layout rows and lost both)
    if backend == "gpu" and not args.quick:
        result["scan_layouts"] = []
        for layout, env, processes, streams, mode, streamed, switch_ms, pyav_mux, workers, full_runs, spread, \
                budget, client in layouts:
            before = sys.getswitchinterval()
            if switch_ms is not None:
                sys.setswitchinterval(switch_ms / 1000)
            _remux.JOIN_IN_ORDER = not pyav_mux
            _remux.SKIP_UNREFERENCED = not full_runs
            try:
                result["scan_layouts"].append({"layout": layout, "switch_interval_ms": switch_ms or 1000 * before,
                                               "pyav_mux": pyav_mux, "full_exact_runs": full_runs,
                                               "spread_min_frames": spread, "budget_samples": budget,
                                               "env": {**row_environment(), **env},
                                               **attempt(f"scan {layout}", lambda: library_scan(
                                                   "scan_layout_out", streams, processes=processes, mode=mode,
                                                   stream_decode=streamed, prepare_processes=workers,
                                                   spread_min_frames=spread, budget_samples=budget,
                                                   decode_client=client, **({"env": env} if env else {})))})
            finally:
                sys.setswitchinterval(before)
                _remux.JOIN_IN_ORDER = _remux.SKIP_UNREFERENCED = True
            save()
    print(json.dumps(result, indent=2))
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
