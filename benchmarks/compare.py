"""Compare benchmark results from many machines: ``benchmarks/results/*.json`` -> REPORT.md + REPORT.png.

Each result file is written by a ``*_bench.py`` script (sampling, training, scan) on one machine:
``{"benchmark": ..., "machine": {"gpu", "cpu", "cpu_count"}, "versions": {...}, "results": ...}``.
The reader is tolerant, since the files come from other people's machines and script versions: the
benchmark kind comes from the ``benchmark`` field or the file name, metrics are found by name anywhere
inside ``results`` (lists, nested dicts, per-device sections), and a file it cannot use is skipped
with a warning naming the file and why. For each machine, device and benchmark the best measured
configuration is reported, so a machine is shown at what it can do.

    python benchmarks/compare.py                      # reads benchmarks/results/, writes REPORT.md/.png there
    python benchmarks/compare.py --results other/ --bitrate-mbps 60
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import click

log = logging.getLogger("quadvault_dali.benchmarks.compare")
RESULTS = Path(__file__).resolve().parent / "results"

#: kind -> (column title, metric names in order of preference). Training counts the end-to-end step
#: fed by the product's DALI loader (``dali_train_images_per_s``), not the loader alone.
METRICS: dict[str, tuple[str, tuple[str, ...]]] = {
    "sampling": ("Sampled frames/s", ("sampled_frames_per_s", "sampled_fps", "frames_per_s", "frames_per_sec")),
    "train": ("Training images/s", ("dali_train_images_per_s", "train_images_per_s", "images_per_s")),
    "scan": ("Scan frames/s", ("scan_frames_per_s", "sampled_frames_per_s", "sampled_fps")),
}
#: Sections and rows that measure a baseline (decode everything, DataLoader+PIL), not the product.
_BASELINE_WORDS = ("baseline", "naive")
_SKIP_SECTIONS = {"machine", "versions", "library", "config", "goals_h100", "cat_read",
                  # the report's scan figure is the default (auto) sampling, not keyframe mode or the A/B layouts
                  # (settings the product does not use, like another GIL switch interval or PyAV's muxing)
                  "scan_keyframe", "scan_layouts"}
_KIND_ALIASES = {"sampling": "sampling", "sample": "sampling", "decode": "sampling", "train": "train",
                 "training": "train", "scan": "scan", "scanning": "scan"}
_DEVICE_ALIASES = {"gpu": "gpu", "cuda": "gpu", "mixed": "gpu", "dali": "gpu", "cpu": "cpu"}
#: Benchmarks of this project that are not compared across machines here (their JSON is read on its own).
_OWN_REPORTS = {"prep", "gpu_diagnose"}
_ALL_METRIC_KEYS = {k for _, keys in METRICS.values() for k in keys} | {"frames_per_s", "images_per_s"}
UNKNOWN_CPU = "unknown CPU"
_CONFIG_KEYS = ("mode", "sampling", "codec", "resolution", "processes", "streams", "layout", "batch_size", "model",
                "architecture", "workers", "gpus", "stream_decode",
                "decoder_util_mean",  # NVDEC busy %: is the hardware the limit?
                "cpu_cores_busy")  # or the host's CPUs (of the machine's cpu_count)?


@dataclass(frozen=True)
class Machine:
    gpu: str | None
    cpu: str
    cpu_count: int | None

    def label(self, device: str) -> str:
        if device == "gpu" and self.gpu:
            return self.gpu
        cores = f", {self.cpu_count} cores" if self.cpu_count else ""
        return f"CPU: {self.cpu}{cores}"


@dataclass
class Best:
    value: float
    config: str
    source: str
    quick: bool = False


@dataclass
class Row:
    machine: Machine
    device: str
    best: dict[str, Best] = field(default_factory=dict)
    quick: bool = False


@dataclass(frozen=True)
class Projection:
    """How the library-wide time is projected: sampled frames of the whole library / frames per second."""

    videos: int = 18_000
    library_bytes: float = 9e12
    bitrate_mbps: float = 100.0  # typical 4K drone footage (DJI: 100-150 Mbit/s); 1080p is nearer 40
    sample_fps: float = 1.0

    @property
    def footage_s(self) -> float:
        return self.library_bytes * 8 / (self.bitrate_mbps * 1e6)

    @property
    def frames(self) -> float:
        return self.footage_s * self.sample_fps

    def explain(self) -> str:
        return (f"{self.library_bytes / 1e12:g} TB at an average {self.bitrate_mbps:g} Mbit/s is "
                f"{self.footage_s / 3600:,.0f} h of footage ({self.footage_s / self.videos:.0f} s per video over "
                f"{self.videos:,} videos); at {self.sample_fps:g} frame/s that is {self.frames:,.0f} sampled frames. "
                "Time = those frames / the machine's scan frames/s (end to end: read, decode, score, write); "
                "where a machine has no scan result, its sampling frames/s is used instead (marked *, decoding "
                "only, so optimistic). Per-video overheads (opening, probing) are included only as far as the "
                "benchmark's own videos include them; change the assumptions with --bitrate-mbps/--library-tb.")


def _gpu_name(value: Any) -> str | None:
    if isinstance(value, str) and value.strip():
        return value.strip()
    if isinstance(value, dict):
        return _gpu_name(value.get("name"))
    if isinstance(value, list) and value:
        first = _gpu_name(value[0])
        return f"{first} ×{len(value)}" if first and len(value) > 1 else first
    return None


def parse_machine(doc: dict[str, Any]) -> Machine:
    m = doc.get("machine")
    if not isinstance(m, dict):
        raise ValueError("no 'machine' object")
    cpu = m.get("cpu") or m.get("cpu_model") or m.get("processor") or UNKNOWN_CPU
    count = m.get("cpu_count") or m.get("cpus") or m.get("cores")
    return Machine(_gpu_name(m.get("gpu", m.get("gpu_name"))), str(cpu), int(count) if count else None)


def detect_kind(doc: dict[str, Any], path: Path) -> str | None:
    for name in (doc.get("benchmark"), doc.get("name"), path.stem.replace("-", "_").split("_")[0]):
        if isinstance(name, str):
            key = name.lower().replace("_bench", "").replace("-", "_").split("_")[0]
            if key in _KIND_ALIASES:
                return _KIND_ALIASES[key]
    return None


def _device(ctx: dict[str, Any]) -> str | None:
    for key in ("device", "backend"):
        value = ctx.get(key)
        if isinstance(value, str) and value.lower() in _DEVICE_ALIASES:
            return _DEVICE_ALIASES[value.lower()]
    return None


def iter_measurements(node: Any, keys: tuple[str, ...], ctx: dict[str, Any] | None = None
                      ) -> Iterator[tuple[float, dict[str, Any]]]:
    """(value, context) for every dict holding one of ``keys``; context = the scalars around it."""
    ctx = dict(ctx or {})
    if isinstance(node, list):
        for item in node:
            yield from iter_measurements(item, keys, ctx)
        return
    if not isinstance(node, dict) or _is_baseline(node):
        return
    scalars = {k: v for k, v in node.items()
               if k not in _ALL_METRIC_KEYS and isinstance(v, (str, int, float, bool))}
    ctx.update(scalars)
    for key in keys:
        value = node.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
            yield float(value), ctx
            break
    for name, child in node.items():
        if isinstance(child, (dict, list)) and name not in _SKIP_SECTIONS and not _is_baseline(name):
            sub = dict(ctx)
            if name.lower() in _DEVICE_ALIASES:
                sub["device"] = name.lower()
            yield from iter_measurements(child, keys, sub)


def _is_baseline(node: Any) -> bool:
    """A baseline section (by its key) or row (by its backend/tool/name)."""
    texts = [node] if isinstance(node, str) else [node.get(k) for k in ("backend", "tool", "name", "kind")]
    return any(isinstance(t, str) and any(w in t.lower() for w in _BASELINE_WORDS) for t in texts)


def _config(ctx: dict[str, Any]) -> str:
    return ", ".join(f"{k}={ctx[k]}" for k in _CONFIG_KEYS if k in ctx)


def _read(path: Path) -> tuple[dict[str, Any], Machine, str] | None:
    """(document, machine, kind) of one result file, or ``None`` with a warning saying why not."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        machine = parse_machine(doc)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        log.warning("skipping %s: %s", path.name, exc)
        return None
    kind = detect_kind(doc, path)
    if kind is None and str(doc.get("benchmark")) in _OWN_REPORTS:
        log.info("%s: a %s result, read on its own (not a GPU comparison)", path.name, doc["benchmark"])
        return None
    if kind is None:
        log.warning("skipping %s: unknown benchmark (no 'benchmark' field and the name does not start with "
                    "sampling/train/scan)", path.name)
        return None
    return doc, machine, kind


def _same_machines(machines: list[Machine]) -> dict[Machine, Machine]:
    """Files from one machine that omit the CPU model join the one known model with the same GPU and cores."""
    known: dict[tuple[str | None, int | None], set[str]] = {}
    for m in machines:
        if m.cpu != UNKNOWN_CPU:
            known.setdefault((m.gpu, m.cpu_count), set()).add(m.cpu)
    out = {}
    for m in machines:
        models = known.get((m.gpu, m.cpu_count), set())
        out[m] = Machine(m.gpu, next(iter(models)), m.cpu_count) if m.cpu == UNKNOWN_CPU and len(models) == 1 else m
    return out


def load_rows(results_dir: Path) -> tuple[list[Row], list[str]]:
    """Rows per (machine, device), best value per benchmark; plus the names of the files used.

    A full run beats a ``--quick`` one whatever the numbers (quick runs measure fixed costs).
    """
    read = [(path, r) for path in sorted(results_dir.glob("*.json")) if (r := _read(path)) is not None]
    alias = _same_machines([m for _, (_, m, _) in read])
    rows: dict[tuple[Machine, str], Row] = {}
    used: list[str] = []
    for path, (doc, machine, kind) in read:
        machine = alias[machine]
        quick = bool(doc.get("quick"))
        base = {k: v for k, v in (doc.get("config") or {}).items() if isinstance(v, (str, int, float, bool))}
        body = doc["results"] if "results" in doc else {k: v for k, v in doc.items() if k not in _SKIP_SECTIONS}
        default_device = _device(doc) or ("gpu" if machine.gpu else "cpu")
        found = 0
        for value, ctx in iter_measurements(body, METRICS[kind][1], base):
            device = _device(ctx) or default_device
            row = rows.setdefault((machine, device), Row(machine, device))
            old = row.best.get(kind)
            if old is None or (old.quick and not quick) or (old.quick == quick and value > old.value):
                row.best[kind] = Best(value, _config(ctx), path.name, quick)
            found += 1
        if not found:
            log.warning("skipping %s: no %s metric (%s) outside its baselines", path.name, kind,
                        ", ".join(METRICS[kind][1]))
            continue
        used.append(path.name)
    for row in rows.values():
        row.quick = any(b.quick for b in row.best.values())
    ordered = sorted(rows.values(), key=lambda r: (r.device != "gpu", -_rate(r)[0], r.machine.label(r.device)))
    return ordered, used


def _rate(row: Row) -> tuple[float, bool]:
    """(frames/s used for the projection, whether it is the sampling fallback)."""
    if "scan" in row.best:
        return row.best["scan"].value, False
    if "sampling" in row.best:
        return row.best["sampling"].value, True
    return 0.0, False


def format_duration(seconds: float) -> str:
    hours = seconds / 3600
    if hours >= 48:
        return f"{hours:,.0f} h ({hours / 24:.1f} days)"
    return f"{hours:.1f} h" if hours >= 1 else f"{seconds / 60:.0f} min"


def render_markdown(rows: list[Row], used: list[str], projection: Projection, chart: str | None) -> str:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# QuadVault DALI benchmark comparison", "",
             f"Generated {now} by `benchmarks/compare.py` from {len(used)} result file(s). "
             "Best configuration per machine and device; higher is better.", ""]
    titles = [METRICS[k][0] for k in ("sampling", "train", "scan")]
    head = ["Machine", "Device", *titles, f"{projection.videos:,} videos / {projection.library_bytes / 1e12:g} TB"]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [row.machine.label(row.device) + (" (quick run)" if row.quick else ""), row.device]
        for kind in ("sampling", "train", "scan"):
            best = row.best.get(kind)
            cells.append(f"{best.value:,.1f}" if best else "—")
        rate, fallback = _rate(row)
        cells.append(format_duration(projection.frames / rate) + (" *" if fallback else "") if rate else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"**How the time is projected.** {projection.explain()}", ""]
    if any(r.quick for r in rows):
        lines += ["Rows marked *(quick run)* come from `--quick` runs: tiny clips that check a benchmark works; "
                  "fixed costs dominate them, so they understate throughput. A full run replaces them.", ""]
    if chart:
        lines += [f"![throughput chart]({chart})", ""]
    lines += ["## Best configurations", "", "| Machine | Device | Benchmark | Value | Configuration | File |",
              "| --- | --- | --- | --- | --- | --- |"]
    for row in rows:
        for kind, best in sorted(row.best.items()):
            lines.append(f"| {row.machine.label(row.device)} | {row.device} | {METRICS[kind][0]} | "
                         f"{best.value:,.1f} | {best.config or '—'} | `{best.source}` |")
    lines += ["", "Add your machine: see `docs/benchmarks.md`.", ""]
    return "\n".join(lines)


def write_chart(rows: list[Row], path: Path) -> bool:
    """Horizontal bars per benchmark; ``False`` (with a warning) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: no chart written (pip install matplotlib)")
        return False
    kinds = [k for k in ("sampling", "train", "scan") if any(k in r.best for r in rows)]
    fig, axes = plt.subplots(1, max(1, len(kinds)), figsize=(5 * max(1, len(kinds)), 1.2 + 0.5 * len(rows)),
                             squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        present = [r for r in rows if kind in r.best]
        labels = [f"{r.machine.label(r.device)} ({r.device})" for r in present]
        values = [r.best[kind].value for r in present]
        ax.barh(labels, values, color=["#76b900" if r.device == "gpu" else "#888888" for r in present])
        ax.set_title(METRICS[kind][0])
        ax.invert_yaxis()
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:,.0f}", va="center", fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return True


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def compare(results_dir: Path, out: Path | None = None, projection: Projection = Projection(),
            chart: bool = True) -> Path:
    """Writes the report (and chart) for ``results_dir``; returns the report's path."""
    out = out or results_dir / "REPORT.md"
    rows, used = load_rows(results_dir)
    if not rows:
        raise click.ClickException(f"{results_dir}: no usable benchmark results (*.json); run a *_bench.py first")
    png = out.with_suffix(".png")
    chart_name = png.name if chart and write_chart(rows, png) else None
    write_atomic(out, render_markdown(rows, used, projection, chart_name))
    return out


@click.command()
@click.option("--results", "results_dir", type=click.Path(file_okay=False, path_type=Path), default=RESULTS,
              show_default=True, help="Folder of result JSON files.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Report path [default: RESULTS/REPORT.md]; the chart goes next to it as .png.")
@click.option("--videos", type=click.IntRange(1), default=18_000, show_default=True)
@click.option("--library-tb", type=click.FloatRange(min=0.001), default=9.0, show_default=True)
@click.option("--bitrate-mbps", type=click.FloatRange(min=1.0), default=100.0, show_default=True,
              help="Average bit rate of the library, to turn terabytes into hours of footage.")
@click.option("--no-chart", is_flag=True, help="Only the Markdown report.")
def main(results_dir: Path, out: Path | None, videos: int, library_tb: float, bitrate_mbps: float,
         no_chart: bool) -> None:
    """Compare machines' benchmark results in one Markdown table and chart.

    \b
    Example:
      python benchmarks/compare.py && open benchmarks/results/REPORT.md
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s", stream=sys.stderr)
    report = compare(results_dir, out, Projection(videos, library_tb * 1e12, bitrate_mbps), chart=not no_chart)
    click.echo(f"Report: {report}")


if __name__ == "__main__":
    main()
