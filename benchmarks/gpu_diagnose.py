"""Why is keyframe sampling on NVDEC slow, and where does the GPU-vs-CPU colour bias come from? One ≤ 2-minute run.

1. *Decode cost structure*: keyframe-mode clips are cut once with the project's own ``plan_samples`` /
   ``plan_clips`` (outside the timing), then ``video_sampling_pipeline`` is timed directly (no sampler
   threads) over clips per run (DALI batch) × ``num_threads`` × pipelines in parallel threads × frames per
   clip (one video's keyframes, or the keyframes of 8 copies back to back in one MP4), for H.264 whose
   coded height differs from the displayed one (1080 → 1088), H.264 whose does not (720), and 2160p HEVC.
   Each cell reports build time, first run, sampled frames/s, ms per clip and per run, a stamp check of
   the frames, and GPU memory; a separate check watches GPU memory over 120 clips (decoder-cache growth).
   (Case ``plan`` is the clip the gpu backend cuts itself; x265's CRA keyframes now share it, relabelled BLA.)
2. *Colour*: H.264 tagged BT.709 and untagged, at 640x360 (coded 368), 256x160 and 1920x1080 (coded
   1088): DALI's raw output (BT.601) against PyAV forced to BT.601 and against an exact float conversion
   of the decoded YCbCr planes; the BT.601→tag correction against the tag; and the two samplers end to end.
   Each comparison gives the per-channel mean bias overall, in the top / middle / bottom rows and in ten
   horizontal bands, so a chroma-plane offset (bias at the top or bottom) tells itself from a uniform one.
3. *Environment*: GPU, driver, DALI, PyAV, FFmpeg, torch.

``--device cpu`` runs the same plumbing on DALI's CPU decoder with VP9 clips (no GPU needed).

    python benchmarks/gpu_diagnose.py --out /tmp/diagnose.json              # on the GPU machine, ~2 minutes
    python benchmarks/gpu_diagnose.py --device cpu --quick --out /tmp/d.json  # the plumbing, here
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import torch


sys.path.insert(0, str(Path(__file__).resolve().parent))  # its two helpers live beside it
from _diagnose_colour import colour_rows  # noqa: E402
from _diagnose_report import environment, print_tables, write  # noqa: E402
from _diagnose_scale import (GRID_SCALE, GRID_SCALE_QUICK, SCALE_PROCESSES, SCALE_PROCESSES_QUICK,  # noqa: E402
                             ProcessGrid, Runner, StreamRunner, make_runner)
from _gpu_monitor import UtilisationMonitor  # noqa: E402
from _diagnose_media import Case, check_stamps, colour_specs, decode_specs, generate, make_cases, plan_cut  # noqa: E402

#: per video: (clip kind, [(clips per run, num_threads) with one pipeline], also run the best with 4 pipelines)
#: (batch 1 with 8 threads is left out: DALI spreads the samples of a batch over its threads, one sample each)
GRID_FULL = {"main": [("k", [(1, 1), (2, 1), (2, 2), (8, 1), (8, 2), (8, 8)], True),
                      ("ku", [(1, 1), (2, 2), (8, 8)], True),  # the same, SPS uncropped: DALI's cache hits
                      ("x8", [(1, 1), (2, 2), (8, 8)], True),
                      ("x8u", [(2, 2), (8, 8)], True),
                      ("stream", [(1, 1), (4, 4)], True)],  # inputs.video: sequences per run, threads
             "aligned": [("k", [(1, 1), (8, 8)], True), ("x8", [(8, 8)], False)],
             "big": [("plan", [(1, 1), (8, 8)], False), ("k", [(1, 1), (8, 8)], True), ("x8", [(2, 2)], False),
                     ("stream", [(4, 4)], False)]}
GRID_QUICK = {"main": [("k", [(1, 1), (8, 8)], True), ("ku", [(8, 8)], False), ("x8", [(2, 2)], False),
                       ("stream", [(2, 1)], False)],
              "aligned": [("k", [(8, 8)], False)]}
#: the colour clips may use the run's first part of the budget; any left over run after the timing
COLOUR_SHARE = 0.35


# --- timing --------------------------------------------------------------------------------------

def time_cell(case: Case, batch: int, threads: int, pipelines: int, args: argparse.Namespace) -> dict[str, Any]:
    """Runs ``pipelines`` pipelines in parallel threads for about ``args.cell_s`` after one warm-up run each."""
    barrier = threading.Barrier(pipelines)
    got: list[Any] = [None] * pipelines

    def worker(i: int) -> None:
        try:
            if args.device == "gpu":
                torch.cuda.set_device(args.device_id)
            runner = make_runner(args.device, case, batch, threads, args.size, args.device_id)
            t0 = time.perf_counter()
            frames = runner.run()
            first_s = time.perf_counter() - t0
            stamps = None
            if i == 0:
                head = case.stamps[: frames[0].shape[0]] if isinstance(runner, StreamRunner) else None
                stamps = check_stamps(frames[0], case, head)  # a stream's first sequence: the clip's first frames
            barrier.wait(timeout=300)
            start, before = time.perf_counter(), runner.frames_out
            runs = 0
            while runs < 1 or (time.perf_counter() - start < args.cell_s and runs < 500):
                runner.run()
                runs += 1
            got[i] = {"build_s": runner.build_s, "first_s": first_s, "stamps": stamps, "runs": runs,
                      "frames": runner.frames_out - before, "start": start, "end": time.perf_counter()}
            del runner
        except BaseException as exc:  # noqa: BLE001 - reported in the cell
            got[i] = exc
            barrier.abort()

    workers = [threading.Thread(target=worker, args=(i,), name=f"diag-pipe-{i}") for i in range(pipelines)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    cell: dict[str, Any] = {"case": case.label, "frames_per_clip": case.frames, "clip_bytes": len(case.clip.data),
                            "batch": batch, "threads": threads, "pipelines": pipelines}
    errors = sorted((g for g in got if isinstance(g, BaseException)),
                    key=lambda e: isinstance(e, threading.BrokenBarrierError))  # the cause before its echoes
    if errors:
        return {**cell, "error": f"{type(errors[0]).__name__}: {str(errors[0])[:400]}"}
    seconds = max(g["end"] for g in got) - min(g["start"] for g in got)
    frames = sum(g["frames"] for g in got)
    clips = frames / case.frames  # clip-equivalents: a "stream" sample is a sequence, not a clip
    return {**cell, "build_s": round(max(g["build_s"] for g in got), 3),
            "first_run_ms": round(1000 * max(g["first_s"] for g in got), 1), "runs": sum(g["runs"] for g in got),
            "clips": round(clips, 2), "frames": frames, "seconds": round(seconds, 3),
            "frames_per_s": round(frames / seconds, 1), "ms_per_clip": round(1000 * seconds / clips, 2),
            "ms_per_run": round(1000 * seconds * pipelines / sum(g["runs"] for g in got), 2),
            "stamps": got[0]["stamps"]}


def memory_check(case: Case, clips_total: int, args: argparse.Namespace) -> dict[str, Any]:
    """GPU memory (and ms per clip) of one fresh pipeline every 40 clips: a growing decoder cache shows here."""
    if args.device == "gpu":
        torch.cuda.set_device(args.device_id)
    batch = 8
    points = [{"clips": None, "stage": "before build", "gpu_mib": gpu_memory_mib(), "rss_mib": rss_mib()}]
    runner = Runner(args.device, case, batch, 8, args.size, args.device_id)
    runner.run()
    points.append({"clips": batch, "stage": "after warm-up", "gpu_mib": gpu_memory_mib(), "rss_mib": rss_mib()})
    done, t0 = 0, time.perf_counter()
    while done < clips_total:
        runner.run()
        done += batch
        if done % 40 == 0 or done >= clips_total:
            ms = 1000 * (time.perf_counter() - t0) / (40 if done % 40 == 0 else done % 40)
            points.append({"clips": done, "ms_per_clip": round(ms, 2), "gpu_mib": gpu_memory_mib(),
                           "rss_mib": rss_mib()})
            t0 = time.perf_counter()
    del runner
    return {"case": case.label, "batch": batch, "threads": 8, "points": points}


def gpu_memory_mib() -> float | None:
    """Device memory in use (nvidia-smi: DALI's allocations are not PyTorch's, so torch.cuda cannot see them)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.split()
        return float(out[0]) if out else None
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def rss_mib() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


# --- the run -------------------------------------------------------------------------------------

class Run:
    """The report being filled, the time left, and the videos being generated."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.started = time.perf_counter()
        self.sections = set(args.sections.split(","))
        args.work.mkdir(parents=True, exist_ok=True)
        vid_specs = decode_specs(args.device, args.quick) if self.sections & {"decode", "memory", "scale"} else {}
        col_specs = colour_specs(args.device, args.quick) if "colour" in self.sections else {}
        # Generated in forked processes (before CUDA starts here) while the first measurements run.
        workers = max(1, min(12, len(vid_specs) + len(col_specs), os.cpu_count() or 1))
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("fork"))
        self.cols = generate(self.pool, args.work, col_specs)  # the small ones first
        self.vids = generate(self.pool, args.work, vid_specs)
        self.report: dict[str, Any] = {
            "benchmark": "gpu_diagnose", "quick": args.quick, "complete": False,
            "environment": environment(args.device),
            "config": {"size": args.size, "cell_s": args.cell_s, "budget_s": args.budget_s,
                       "memory_clips": args.memory_clips, "sections": sorted(self.sections)},
            "generation_s": {}, "section_s": {}, "videos": {}, "decode": {"cells": [], "memory": []}, "colour": [],
            "scale": [], "notes": []}
        self.cases: dict[str, dict[str, Case]] = {}  # per decode video, for the scale section

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self) -> float:
        return self.args.budget_s - self.elapsed()

    def generating(self) -> bool:
        return any(not f.done() for f in [*self.vids.values(), *self.cols.values()])

    def stop_generating(self) -> None:
        """Ends the generator processes, also one still encoding a video the budget left no time for (the
        executor would otherwise keep the interpreter from exiting until it finishes)."""
        processes = list((getattr(self.pool, "_processes", None) or {}).values())  # shutdown() forgets them
        self.pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            if process.is_alive():
                process.terminate()

    def save(self) -> None:
        write(self.args.out, self.report)

    def skip(self, what: str) -> None:
        self.report["notes"].append(f"{what}: skipped, out of time")

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            spent = self.report["section_s"].get(name, 0.0) + time.perf_counter() - t0
            self.report["section_s"][name] = round(spent, 1)

    def colour(self, until_s: float) -> None:
        """Colour rows for the clips not done yet, while the run is younger than ``until_s``."""
        with self.section("colour"):
            self._colour(until_s)

    def _colour(self, until_s: float) -> None:
        done = {r["clip"] for r in self.report["colour"]}
        for name, job in self.cols.items():
            if name in done:
                continue
            if self.elapsed() > until_s or self.left() < 8:
                return
            try:
                self.report["generation_s"][name] = round(job.result(timeout=max(1.0, self.left() - 5)), 1)
                info, clips = plan_cut(job.path)  # type: ignore[attr-defined]
                self.report["colour"].extend(colour_rows(name, job.path, info, clips[0],  # type: ignore[attr-defined]
                                                         self.args.device, self.args.device_id))
            except Exception as exc:  # noqa: BLE001 - reported
                self.report["colour"].append({"clip": name, "error": f"{type(exc).__name__}: {exc}"[:400]})
            self.save()

    def cell(self, case: Case, batch: int, threads: int, pipelines: int) -> dict[str, Any]:
        row = time_cell(case, batch, threads, pipelines, self.args)
        row.update(gpu_mib_after=gpu_memory_mib(), generation_running=self.generating())
        self.report["decode"]["cells"].append(row)
        self.save()
        return row

    def video(self, name: str) -> None:
        """The timing grid, then the memory check, for one of the decode videos."""
        args = self.args
        try:
            self.report["generation_s"][name] = round(self.vids[name].result(timeout=max(1.0, self.left() - 20)), 1)
        except TimeoutError:
            self.skip(f"video {name} (still being generated)")
            return
        path: Path = self.vids[name].path  # type: ignore[attr-defined]
        info, clips = plan_cut(path)
        cases = make_cases(name, path)
        self.cases[name] = cases
        self.report["videos"][name] = {
            "path": path.name, "codec": info.codec, "display": f"{info.width}x{info.height}",
            "mb_aligned_height": -(-info.height // 16) * 16, "bytes": path.stat().st_size,
            "plan_clips": [len(c) for c in clips], "frames_per_case": {k: c.frames for k, c in cases.items()}}
        grid = (GRID_QUICK if args.quick else GRID_FULL).get(name, []) if "decode" in self.sections else []
        for kind, cells, with_four in grid:
            if kind not in cases:  # an uncropped case of a stream that crops nothing
                continue
            rows = []
            for batch, threads in cells:
                if self.left() < args.cell_s + 5:
                    self.skip(f"{cases[kind].label} batch {batch} threads {threads}")
                    continue
                rows.append(self.cell(cases[kind], batch, threads, 1))
            timed = [r for r in rows if "frames_per_s" in r]
            if with_four and timed:
                if self.left() < args.cell_s + 10:
                    self.skip(f"{cases[kind].label} with 4 pipelines")
                    continue
                best = max(timed, key=lambda r: r["frames_per_s"])
                self.cell(cases[kind], best["batch"], best["threads"], 4)
        if "memory" in self.sections and name in ("main", "aligned"):
            if self.left() < 15:
                self.skip(f"memory check {name}")
                return
            for kind in ("k", "ku"):  # cropped H.264 fills DALI's decoder cache; uncropped must not
                if kind not in cases:
                    continue
                try:
                    self.report["decode"]["memory"].append(memory_check(cases[kind], args.memory_clips, args))
                except Exception as exc:  # noqa: BLE001 - reported
                    self.report["decode"]["memory"].append({"case": cases[kind].label,
                                                            "error": f"{type(exc).__name__}: {exc}"[:400]})
                self.save()


    def scale(self) -> None:
        """The scale section: each case in 1, 2, 4, 8 processes at once (workers started once)."""
        args = self.args
        grid = GRID_SCALE_QUICK if args.quick else GRID_SCALE
        counts = SCALE_PROCESSES_QUICK if args.quick else SCALE_PROCESSES
        cells = [(self.cases[name][kind], batch, threads) for name, rows in grid.items() if name in self.cases
                 for kind, batch, threads in rows if kind in self.cases[name]]
        if not cells:
            self.skip("scale (no decode video ready)")
            return
        if self.left() < 25:
            self.skip("scale")
            return
        try:
            pool = ProcessGrid(max(counts), args.device, args.device_id, args.size,
                               start_timeout_s=max(10.0, self.left() - 10))
        except Exception as exc:  # noqa: BLE001 - reported
            self.report["scale"].append({"error": f"{type(exc).__name__}: {exc}"[:400]})
            return
        monitor = (lambda: UtilisationMonitor(index=args.device_id, metrics=("gpu", "decoder"), cpu=True)) \
            if args.device == "gpu" else (lambda: UtilisationMonitor(reader=None, metrics=(), cpu=True))
        try:
            for case, batch, threads in cells:
                for processes in counts:
                    if self.left() < args.cell_s + 8:
                        self.skip(f"scale {case.label} in {processes} processes")
                        continue
                    self.report["scale"].append(pool.cell(case, batch, threads, processes, args.cell_s, monitor))
                    self.save()
        finally:
            pool.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("gpu", "cpu"), default="gpu", help="cpu: DALI's CPU decoder, VP9 clips")
    ap.add_argument("--quick", action="store_true", help="a smaller grid, shorter cells, fewer colour clips")
    ap.add_argument("--out", type=Path, default=Path("diagnose.json"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/quadvault-diagnose"), help="generated videos (reused)")
    ap.add_argument("--budget-s", type=float, default=120.0, help="no measurement starts that would end after this")
    ap.add_argument("--cell-s", type=float, default=None, help="timed seconds per cell (default 1.0, quick 0.4)")
    ap.add_argument("--memory-clips", type=int, default=120, help="clips through one pipeline in the memory check")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--device-id", type=int, default=0)
    ap.add_argument("--sections", default="decode,memory,colour",
                    help="any of decode, memory, colour, scale (the cases in 1, 2, 4, 8 processes at once)")
    ap.add_argument("--build-only", action="store_true",
                    help="only generate the videos the --sections need into --work (a lease builds them during its tests)")
    args = ap.parse_args(argv)
    args.cell_s = args.cell_s or (0.4 if args.quick else 1.0)
    run = Run(args)
    if args.build_only:
        try:
            for job in [*run.vids.values(), *run.cols.values()]:
                job.result()
        finally:
            run.stop_generating()
        print(f"generated {len(run.vids) + len(run.cols)} videos in {run.elapsed():.0f}s into {args.work}")
        return 0
    try:
        run.colour(until_s=COLOUR_SHARE * args.budget_s)  # its clips are ready first
        for name in (n for n in ("main", "aligned", "big") if n in run.vids):
            if run.left() < 10:
                run.skip(f"video {name}")
                continue
            with run.section(name):
                run.video(name)
        if "scale" in run.sections:
            with run.section("scale"):
                run.scale()
        run.colour(until_s=args.budget_s)
        for name in run.cols:
            if name not in {r["clip"] for r in run.report["colour"]}:
                run.skip(f"colour {name}")
        run.report["complete"] = True
    finally:
        run.stop_generating()
        run.report["elapsed_s"] = round(run.elapsed(), 1)
        run.save()
    print_tables(run.report)
    print(f"\nwrote {args.out} in {run.report['elapsed_s']}s" + "".join(f"\nnote: {n}" for n in run.report["notes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
