"""CPU scan benchmark: the scan as shipped against the scan before stop 28's CPU changes, in the same run.

A laptop or CI runner without a GPU scans with the CPU backend, where the network is ~40 % of the time (the
rest is PyAV decoding). Stop 28 made three changes that leave the scores as they were:

* the network scores through a copy with every BatchNorm folded into its convolution and EfficientNet-Lite's
  symmetric paddings done by the convolutions (``model/_inference.py``);
* frames go through it 16 at a time (``CPU_CHUNK_FRAMES``), whatever ``--batch-size`` says;
* the scan's process runs torch's OpenMP workers with ``OMP_WAIT_POLICY=PASSIVE`` (``scan/supervise.py``).

Rows, interleaved over ``--rounds`` so drift in the machine's load hits both alike, each in a fresh process:

* ``before``: the network as trained, in chunks of 128, OpenMP's default wait policy;
* ``shipped``: the code as it is.

Also the network alone (ms per frame, both backbones), and the largest score difference between the two scans.
Results: ``benchmarks/results/cpu_scan_<machine>.json``.

    python benchmarks/cpu_scan_bench.py --quick      # 4 tiny videos, one round: checks it runs
    python benchmarks/cpu_scan_bench.py              # 10 videos of 1080p H.264 and 1440p HEVC, 3 rounds
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results import write_json  # noqa: E402
from scan_bench import build_library, machine_info, run_scan  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
FORMATS = [("1080p30_h264", "h264", 1920, 1080, 16_000_000), ("1440p30_hevc", "hevc", 2560, 1440, 24_000_000)]
FORMATS_QUICK = [("180p30_h264", "h264", 320, 180, 600_000), ("360p30_hevc", "hevc", 640, 360, 1_200_000)]
#: the chunk the CPU scored in before stop 28: the scan's default --batch-size
BEFORE_CHUNK = 128


def _use_code_before(model_module: Any) -> None:
    """This process scores as before stop 28: the trained network itself, in chunks of ``BEFORE_CHUNK``."""
    model_module.CPU_CHUNK_FRAMES = BEFORE_CHUNK
    model_module.HighlightModel._scoring_network = lambda self: self.network


def _row_in_child(send: Any, variant: str, args: tuple, kw: dict) -> None:
    from quadvault_dali.model import _scorer

    if variant == "before":
        _use_code_before(_scorer)
    try:
        send.send(("ok", run_scan(*args, **kw)))
    except BaseException as exc:  # noqa: BLE001 - reported in the parent's row
        send.send(("error", f"{type(exc).__name__}: {exc}"))


def scan_row(variant: str, *args: Any, **kw: Any) -> dict:
    """One scan in a fresh process, with the environment the variant's scan process gets."""
    from quadvault_dali.scan.supervise import thread_environment

    env = dict(os.environ)
    env.pop("OMP_WAIT_POLICY", None)
    if variant == "shipped":
        env.update(thread_environment())
    ctx = multiprocessing.get_context("spawn")
    receive, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_row_in_child, args=(send, variant, args, kw), name=f"cpu-scan-{variant}")
    with mock.patch.dict(os.environ, env, clear=True):
        proc.start()
    send.close()
    kind, value = receive.recv()
    proc.join()
    if kind == "error":
        raise RuntimeError(value)
    return {"variant": variant, "omp_wait_policy": env.get("OMP_WAIT_POLICY"), **value}


def seconds_scores(out: Path) -> list[tuple[str, float, float]]:
    import pyarrow.dataset as ds

    table = ds.dataset(out / "seconds", format="parquet").to_table(columns=["path", "timestamp_s", "score"])
    return sorted(zip(*(table.column(c).to_pylist() for c in ("path", "timestamp_s", "score"))))


def make_model(work: Path) -> Path:
    """EfficientNet-Lite0 with its ImageNet weights (shipped with the package): a random one scores every frame
    the same, and the scores' comparison would show nothing."""
    import torch

    from quadvault_dali.model import build_network, save_model

    torch.manual_seed(0)
    net = build_network("efficientnet-lite0", image_size=224, pretrained="auto").eval()
    return save_model(work / "model", net, {"architecture": "efficientnet-lite0", "image_size": 224, "name": "bench"})


def network_alone(image_size: int = 224, frames: int = 64) -> dict:
    """ms per frame of each backbone's forward pass (ImageNet weights where they ship, else random): the trained
    network in chunks of 128 and of CPU_CHUNK_FRAMES, and the scoring copy in chunks of CPU_CHUNK_FRAMES, on the
    same preprocessed frames (best of 3)."""
    import torch

    from quadvault_dali.model import build_network
    from quadvault_dali.model._inference import cpu_inference_network
    from quadvault_dali.model._scorer import CPU_CHUNK_FRAMES

    out = {}
    x = torch.randn(frames, 3, image_size, image_size, generator=torch.Generator().manual_seed(0)).contiguous(
        memory_format=torch.channels_last)
    for architecture in ("efficientnet-lite0", "resnet18"):
        torch.manual_seed(0)
        pretrained = "auto" if architecture == "efficientnet-lite0" else "none"
        net = build_network(architecture, image_size=image_size, pretrained=pretrained).to(
            memory_format=torch.channels_last).eval()
        fast = cpu_inference_network(net, image_size)
        row: dict[str, Any] = {}
        with torch.inference_mode():
            for name, network, chunk in (("before", net, BEFORE_CHUNK), ("unfolded_chunked", net, CPU_CHUNK_FRAMES),
                                         ("shipped", fast, CPU_CHUNK_FRAMES)):
                network(x[:chunk])  # warm-up
                times = []
                for _ in range(3):
                    started = time.perf_counter()
                    for i in range(0, frames, chunk):
                        network(x[i:i + chunk])
                    times.append(time.perf_counter() - started)
                row[f"{name}_ms_per_frame"] = round(min(times) / frames * 1000, 2)
            row["logit_max_abs_diff"] = float((net(x[:8]) - fast(x[:8])).abs().max())
        row["speedup"] = round(row["before_ms_per_frame"] / row["shipped_ms_per_frame"], 2)
        out[architecture] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 tiny videos, one round: checks the benchmark runs")
    ap.add_argument("--videos", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--streams", type=int, default=0, help="decode streams (default: one per CPU core)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--machine", default=None, help="the machine's name in the result file's name")
    args = ap.parse_args()
    formats = FORMATS_QUICK if args.quick else FORMATS
    videos, rounds, durations = (4, 1, (2.0, 4.0)) if args.quick else (args.videos, args.rounds, (10.0, 30.0))
    work = args.work or Path(tempfile.mkdtemp(prefix="cpu_scan_bench_"))
    started = time.perf_counter()
    files = build_library(work, videos, formats, durations, master_s=2.0 if args.quick else 10.0)
    build_s = time.perf_counter() - started
    model = make_model(work)
    streams = args.streams or os.cpu_count() or 1
    result: dict[str, Any] = {
        "benchmark": "cpu_scan", "quick": args.quick, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info("cpu"),
        "library": {"videos": len(files), "bytes": sum(f.stat().st_size for f in files),
                    "formats": [f[0] for f in formats], "durations_s": list(durations), "build_s": round(build_s, 1)},
        "streams": streams, "network_alone": network_alone(), "rows": []}
    name = args.machine or f"cpu-{os.cpu_count()}c"
    out = args.out or RESULTS / f"cpu_scan_{name}{'_quick' if args.quick else ''}.json"
    scores: dict[str, list] = {}
    for round_no in range(rounds):
        for variant in ("before", "shipped"):
            row = scan_row(variant, files, work / f"out_{variant}", "cpu", model, streams, BEFORE_CHUNK, mode="auto")
            row["round"] = round_no
            result["rows"].append(row)
            scores[variant] = seconds_scores(work / f"out_{variant}")
            print(f"round {round_no} {variant:8s} {row['wall_s']:7.2f} s  {row['sampled_frames_per_s']:6.2f} frames/s",
                  flush=True)
            write_json(out, result)
    summary: dict[str, Any] = {}
    for variant in ("before", "shipped"):
        walls = [r["wall_s"] for r in result["rows"] if r["variant"] == variant]
        rates = [r["sampled_frames_per_s"] for r in result["rows"] if r["variant"] == variant]
        summary[variant] = {"median_wall_s": statistics.median(walls), "median_frames_per_s": statistics.median(rates)}
    summary["speedup"] = round(summary["before"]["median_wall_s"] / summary["shipped"]["median_wall_s"], 2)
    before, shipped = scores["before"], scores["shipped"]
    same_rows = [(a[0], a[1]) for a in before] == [(b[0], b[1]) for b in shipped]
    summary["same_seconds_rows"] = same_rows
    summary["score_max_abs_diff"] = max((abs(a[2] - b[2]) for a, b in zip(before, shipped)), default=0.0) \
        if same_rows else None
    result["summary"] = summary
    write_json(out, result)
    print(f"network alone: {result['network_alone']}")
    print(f"scan: before {summary['before']['median_wall_s']:.2f} s, shipped {summary['shipped']['median_wall_s']:.2f} s"
          f" -> {summary['speedup']}x; scores differ by at most {summary['score_max_abs_diff']}; wrote {out}")


if __name__ == "__main__":
    main()
