"""gpu_diagnose's report: the environment it ran in, the JSON file, and the printed tables."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
from pathlib import Path
from typing import Any, Callable

import av
import torch

from _results import write_json


# --- report --------------------------------------------------------------------------------------

def environment(device: str) -> dict[str, Any]:
    import nvidia.dali as dali

    from quadvault_dali.device import nvdec_status

    env: dict[str, Any] = {"device": device, "python": platform.python_version(), "torch": torch.__version__,
                           "torch_cuda": torch.version.cuda, "dali": dali.__version__, "pyav": av.__version__,
                           "libavcodec": ".".join(map(str, av.library_versions.get("libavcodec", ()))),
                           "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        env["cpu_model"] = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                                if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device == "gpu":
        env["cuda_device"] = torch.cuda.get_device_name(0)
        env["nvdec"] = nvdec_status()[1]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            env["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=20).stdout.strip()
    return env


def write(out: Path, report: dict[str, Any]) -> None:
    write_json(out, report, indent=1)


def print_tables(report: dict[str, Any]) -> None:
    head = (f"{'case':24} {'f/clip':>6} {'batch':>5} {'thr':>3} {'pipes':>5} {'frames/s':>9} {'ms/clip':>8} "
            f"{'ms/run':>8} {'1st ms':>7} {'build s':>7} {'GPU MiB':>8}  stamps")
    print("\n" + head + "\n" + "-" * len(head))
    for c in report["decode"]["cells"]:
        if "error" in c:
            print(f"{c['case']:24} {c['frames_per_clip']:>6} {c['batch']:>5} {c['threads']:>3} {c['pipelines']:>5}  "
                  f"ERROR {c['error'][:80]}")
            continue
        print(f"{c['case']:24} {c['frames_per_clip']:>6} {c['batch']:>5} {c['threads']:>3} {c['pipelines']:>5} "
              f"{c['frames_per_s']:>9.1f} {c['ms_per_clip']:>8.2f} {c['ms_per_run']:>8.1f} {c['first_run_ms']:>7.0f} "
              f"{c['build_s']:>7.2f} {c.get('gpu_mib_after') or '-':>8}  {c['stamps']}")
    for m in report["decode"]["memory"]:
        series = ", ".join(f"{p['clips']}: {p['gpu_mib']} MiB" + (f" {p['ms_per_clip']} ms/clip" if "ms_per_clip" in p
                                                                  else "") for p in m.get("points", []))
        print(f"memory {m['case']}: {series or m.get('error')}")
    if report.get("scale"):
        _table(f"\n{'scale: case':24} {'batch':>5} {'thr':>3} {'procs':>5} {'frames/s':>9} {'NVDEC %':>8}  per process",
               report["scale"], "case",
               lambda r: f"{r['case']:24} {r['batch']:>5} {r['threads']:>3} {r['processes']:>5} "
                         f"{r['frames_per_s']:>9.1f} {r.get('decoder_util_mean', '-')!s:>8}  "
                         f"{r['per_process_frames_per_s']}")
    fmt = lambda v: ",".join(f"{x:+.1f}" for x in v)  # noqa: E731
    _table(f"\n{'clip':24} {'comparison':36} {'bias R,G,B':>15} {'top10':>15} {'middle':>15} {'bottom10':>15} "
           f"{'|d|':>4}", report["colour"], "clip",
           lambda r: f"{r['clip']:24} {r['compare']:36} {fmt(r['bias']):>15} {fmt(r['top10']):>15} "
                     f"{fmt(r['middle']):>15} {fmt(r['bottom10']):>15} {r['mean_abs']:>4.1f}")


def _table(head: str, rows: list[dict[str, Any]], label: str, line: Callable[[dict[str, Any]], str]) -> None:
    """``head`` (after a blank line), a rule as long as it, then ``line(row)`` per row, or the row's ``label``
    and its error for a measurement that failed."""
    print(head + "\n" + "-" * (len(head) - 1))
    for r in rows:
        print(f"{r.get(label, '-'):24} ERROR {r['error'][:100]}" if "error" in r else line(r))
