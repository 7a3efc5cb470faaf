"""A lease's A/B rows side by side: every gpu sampling layout (or scan layout) of one run against a baseline row
of the same run, with what says why (NVDEC busy, host cores busy, frames per DALI sample, queued clip memory).

``compare.py`` reports each machine at its best; this answers the lease's questions (do processes, the
streaming decoder or a short GIL switch interval beat the default?) from one results file, right after
``give_back``::

    python benchmarks/ab.py benchmarks/results/sampling_nvidia-h200.json            # baseline layout 4x4x4
    python benchmarks/ab.py benchmarks/results/scan_nvidia-h200.json                # baseline: keyframe scan
    python benchmarks/ab.py sampling.json --baseline 8x4x4 --json                   # rows as JSON
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

#: a variant counts as a win (or a loss) beyond this ratio to the baseline: leases measure each row once
CLEAR = 1.10


def _label(row: dict[str, Any]) -> str:
    if row.get("layout"):
        return str(row["layout"])
    return f"{row.get('mode', '?')} {row.get('streams', '?')} streams"


def _why(row: dict[str, Any]) -> str:
    parts = []
    for key, name, fmt in (("decoder_util_mean", "NVDEC", "{:.0f} %"), ("cpu_cores_busy", "cores", "{:.1f}"),
                           ("frames_per_dali_sample", "frames/sample", "{:.1f}"),
                           ("queued_at_take_mean", "queued at take", "{:.1f}"),
                           ("decode_wait_share", "streams waiting", "{:.0%}"),
                           ("queued_mb_peak", "queued", "{:.0f} MB"), ("switch_interval_ms", "switch", "{:g} ms"),
                           ("decoder_opens", "decoders opened", "{:d}"), ("drains", "drains", "{:d}"),
                           ("frames_on_device", "NVDEC pictures", "{:d}")):
        value = row.get(key)
        if isinstance(value, (int, float)):
            parts.append(f"{name} {fmt.format(value)}")
    host, ours = row.get("host_cores_busy"), row.get("cpu_cores_busy")
    if isinstance(host, (int, float)) and isinstance(ours, (int, float)) and host - ours >= 0.5:
        parts.append(f"OTHERS ON THE HOST {host - ours:.1f} cores")  # the row shared the machine (stop 31)
    if isinstance(row.get("host_cores_iowait"), (int, float)) and row["host_cores_iowait"] >= 0.5:
        parts.append(f"iowait {row['host_cores_iowait']:.1f} cores")
    return ", ".join(parts)


def _verdict(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return "better" if ratio >= CLEAR else "worse" if ratio <= 1 / CLEAR else "same"


def sampling_rows(doc: dict[str, Any], baseline: str) -> list[dict[str, Any]]:
    """Per clip, each gpu row with its frames/s as a ratio to the clip's ``baseline`` layout row."""
    out = []
    gpu = [r for r in doc.get("results", []) if r.get("backend") == "gpu"]
    for clip in dict.fromkeys(r.get("clip") for r in gpu):
        rows = [r for r in gpu if r.get("clip") == clip]
        base = next((r for r in rows if r.get("layout") == baseline and r.get("mode") == "keyframe"), None)
        base_fps = base.get("sampled_fps") if base else None
        for r in rows:
            fps = r.get("sampled_fps") or 0.0
            ratio = round(fps / base_fps, 2) if base_fps and r is not base else None
            out.append({"clip": clip, "row": _label(r), "fps": fps, "vs_baseline": ratio, "verdict": _verdict(ratio),
                        "why": _why(r), "errors": len(r.get("errors") or [])})
    return out


def scan_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The default (auto) scan, the keyframe scan and every extra layout: wall time, against reading the
    library (``cat``) and against the keyframe scan (the baseline of the layouts)."""
    cat = (doc.get("cat_read") or {}).get("wall_s")
    named = [("auto (default)", doc.get("scan")), ("keyframe", doc.get("scan_keyframe"))]
    named += [(str(r.get("layout")), r) for r in doc.get("scan_layouts") or []]
    base = (doc.get("scan_keyframe") or {}).get("wall_s")
    out = []
    for name, r in named:
        if not isinstance(r, dict) or not r.get("wall_s"):
            continue
        wall = float(r["wall_s"])
        ratio = round(base / wall, 2) if base and r is not doc.get("scan_keyframe") else None
        out.append({"row": name, "wall_s": wall, "vs_cat": round(wall / cat, 3) if cat else None,
                    "vs_keyframe": ratio, "verdict": _verdict(ratio), "why": _why(r),
                    # start-up left out (``scan_bench.completion_profile``): what a large library's scan would take
                    "steady_vs_cat": r.get("steady_vs_cat_read"), "first_video_s": r.get("first_video_s"),
                    "after_last_video_s": r.get("after_last_video_s"),
                    # when the scanning loop started decoding and scoring (``ScanSummary.phases``, stop 31 on)
                    "phases": {k: v for k, v in (r.get("phases") or {}).items()
                               if k in ("scanning", "first_batch", "first_frames_scored")}})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("result", type=Path, help="a sampling_*.json or scan_*.json")
    ap.add_argument("--baseline", default="4x4x4", help="the sampling layout the others are compared with")
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    try:
        doc = json.loads(args.result.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        print(f"{args.result}: cannot read it: {exc}", file=sys.stderr)
        return 1
    kind = doc.get("benchmark") or args.result.name.split("_")[0]
    if kind not in ("sampling", "scan"):
        print(f"{args.result}: a {kind!r} result; this compares sampling and scan rows", file=sys.stderr)
        return 1
    rows = sampling_rows(doc, args.baseline) if kind == "sampling" else scan_rows(doc)
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    gpu = (doc.get("machine") or {}).get("gpu") or "no GPU"
    mps = ", under NVIDIA MPS" if (doc.get("machine") or {}).get("cuda_mps_pipe_directory") else ""
    print(f"{args.result.name} ({gpu}{mps}):")
    for r in rows:
        if kind == "sampling":
            ratio = f"{r['vs_baseline']:.2f}x" if r["vs_baseline"] is not None else "base " if r["fps"] else "-"
            print(f"  {r['clip']:20} {r['row']:22} {r['fps']:8.1f} fps  {ratio:>6} {r['verdict']:6}  {r['why']}"
                  + (f"  ({r['errors']} errors)" if r["errors"] else ""))
        else:
            vs_cat = f"{r['vs_cat']:.2f}x cat" if r["vs_cat"] is not None else ""
            ratio = f"{r['vs_keyframe']:.2f}x" if r["vs_keyframe"] is not None else ""
            steady = (f"  steady {r['steady_vs_cat']:.2f}x cat, first video at {r['first_video_s']:.1f} s"
                      if r["steady_vs_cat"] is not None else "")
            if r["after_last_video_s"] is not None:
                steady += f", {r['after_last_video_s']:.1f} s after the last"
            if r["phases"]:  # the start-up: the loop began, the first batch came out of the sampler, was scored
                steady += " (" + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in r["phases"].items()) + ")"
            print(f"  {r['row']:16} {r['wall_s']:7.1f} s  {vs_cat:10} {ratio:>6} {r['verdict']:6}  {r['why']}{steady}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
