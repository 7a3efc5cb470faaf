"""gpu_diagnose's decoding runner, and its ``scale`` section: the same clip decoded in 1, 2, 4, 8 processes at once.

Pipelines in threads of one process did not add up on the H200 (1080p keyframe clips: 685 frames/s with one
pipeline, 616 with four), while the team's first measurement (all frames, one pipeline per process) went from
572 to 3,393 frames/s with 8 processes. Each process has its own CUDA context and its own DALI, so this
tells a limit inside one process (a lock, a device-wide ``cudaFree``) from the hardware's: if keyframes
scale with processes, the sampler's throughput lies in ``--processes``; if not, NVDEC is the ceiling.

Workers start once (spawned: the parent's CUDA context cannot be forked) and take cells by pipe: build
and warm up the pipeline, then all start together at one wall-clock time and run for ``cell_s``.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import time
from typing import Any, Callable

import numpy as np
import torch

from _diagnose_media import Case
from quadvault_dali.pipelines import STREAM_INPUT, video_sampling_pipeline, video_stream_pipeline
from quadvault_dali.sampling._clip_decoder import feed_clips
from quadvault_dali.sampling._stream_decoder import STREAM_SEQUENCE  # the sampler's sequence length

#: processes per cell, and the (case, clips per run, threads) cells per video ("stream": sequences per run)
SCALE_PROCESSES = (1, 2, 4, 8)
SCALE_PROCESSES_QUICK = (1, 2)
GRID_SCALE = {"main": [("ku", 8, 8), ("x8u", 8, 8), ("stream", 4, 4)], "big": [("k", 8, 8), ("stream", 4, 4)]}
GRID_SCALE_QUICK = {"main": [("k", 8, 8), ("stream", 2, 1)]}


class Runner:
    """One DALI pipeline, fed the same clip ``batch`` times per run; owned by one thread. ``frames_out``
    counts the frames its runs returned."""

    def __init__(self, device: str, case: Case, batch: int, threads: int, size: int, device_id: int) -> None:
        self.cuda = device == "gpu"
        t0 = time.perf_counter()
        self.pipe = self._graph(decoder_device="mixed" if self.cuda else "cpu", size=size, square=True,
                                batch_size=batch, num_threads=threads, device_id=device_id if self.cuda else None)
        self.pipe.build()
        self.build_s = time.perf_counter() - t0
        self.stream = torch.cuda.Stream() if self.cuda else None
        self.clips = [case.clip] * batch
        self.frames_out = 0

    @staticmethod
    def _graph(**kwargs: Any) -> Any:
        return video_sampling_pipeline(**kwargs)

    def run(self) -> list[torch.Tensor]:
        """One DALI run; the frames copied out as the gpu backend does, and finished (stream synchronised)."""
        feed_clips(self.pipe, self.clips)
        (out,) = self.pipe.run()
        return self._copy_out(out)

    def _copy_out(self, out: Any) -> list[torch.Tensor]:
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            frames = [torch.from_dlpack(out[i]).clone() for i in range(len(out))]
            if self.stream is not None:
                self.stream.synchronize()
        self.frames_out += sum(f.shape[0] for f in frames)
        return frames


class StreamRunner(Runner):
    """The product's streaming graph (``video_stream_pipeline``) over one long clip (many videos' keyframes
    back to back): one decoder for the whole clip, ``STREAM_SEQUENCE`` frames per sample, ``batch`` samples
    per run, where ``fn.decoders.video`` sets a decoder up for every sample (~10 ms on an H200). The clip is
    fed again whenever one ends, so the operator never runs dry. (Uncropped clips keep their padding rows.)"""

    def __init__(self, device: str, case: Case, batch: int, threads: int, size: int, device_id: int) -> None:
        super().__init__(device, case, batch, threads, size, device_id)
        self.data = np.frombuffer(case.clip.data, dtype=np.uint8)
        self.clip_frames = case.frames
        self.left = 0  # frames not yet returned of the clips fed
        for _ in range(2):
            self._feed()

    @staticmethod
    def _graph(**kwargs: Any) -> Any:
        return video_stream_pipeline(sequence_length=STREAM_SEQUENCE, **kwargs)

    def _feed(self) -> None:
        self.pipe.feed_input(STREAM_INPUT, [self.data])
        self.left += self.clip_frames

    def run(self) -> list[torch.Tensor]:
        (out,) = self.pipe.run()
        frames = self._copy_out(out)
        self.left -= sum(f.shape[0] for f in frames)
        if self.left < 2 * self.clip_frames:  # one clip ended: queue the next
            self._feed()
        return frames


def make_runner(device: str, case: Case, batch: int, threads: int, size: int, device_id: int) -> Runner:
    """The runner a case is timed with: ``StreamRunner`` for the "stream" cases, else ``Runner``."""
    kind = StreamRunner if case.label.endswith("/stream") else Runner
    return kind(device, case, batch, threads, size, device_id)


def _worker(conn: Any, device: str, device_id: int, size: int) -> None:
    """A decoding process: ``("prepare", cell, case, batch, threads)`` builds and warms up a pipeline,
    ``("go", cell, start_at, cell_s)`` runs it from the wall-clock time ``start_at``, ``("stop",)`` ends.
    Every answer carries its cell number, so one left unread after another worker's failure is told apart."""
    if device == "gpu":
        torch.cuda.set_device(device_id)
    runner: Runner | None = None
    conn.send(("up", 0, None))
    while True:
        msg = conn.recv()
        cell = msg[1] if len(msg) > 1 else 0
        try:
            if msg[0] == "stop":
                return
            if msg[0] == "prepare":
                runner = None  # the previous cell's pipeline (and its decoders) go first
                runner = make_runner(device, msg[2], msg[3], msg[4], size, device_id)
                runner.run()
                conn.send(("ready", cell, runner.build_s))
            elif msg[0] == "go":
                assert runner is not None, "go before prepare"
                start_at, cell_s = msg[2], msg[3]
                while time.time() < start_at:
                    time.sleep(0.0005)
                start, t0, runs, before = time.time(), time.perf_counter(), 0, runner.frames_out
                while runs < 1 or (time.perf_counter() - t0 < cell_s and runs < 1000):
                    runner.run()
                    runs += 1
                conn.send(("done", cell, {"runs": runs, "frames": runner.frames_out - before, "start": start,
                                          "end": start + time.perf_counter() - t0}))
        except BaseException as exc:  # noqa: BLE001 - reported in the cell, the worker stays up
            conn.send(("error", cell, f"{type(exc).__name__}: {str(exc)[:300]}"))


class ProcessGrid:
    """``workers`` decoding processes; ``cell`` runs one case in the first ``processes`` of them at once."""

    def __init__(self, workers: int, device: str, device_id: int, size: int, start_timeout_s: float = 120.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conns, self.procs = [], []
        self.cell_no = 0
        try:
            for i in range(workers):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=_worker, args=(child, device, device_id, size), name=f"diag-scale-{i}",
                                   daemon=True)
                proc.start()
                self.conns.append(parent)
                self.procs.append(proc)
            for conn in self.conns:
                self._recv(conn, start_timeout_s, "up", 0)
        except BaseException:
            self.close()  # no worker may keep a CUDA context after a failed start
            raise

    @staticmethod
    def _recv(conn: Any, timeout_s: float, want: str, cell: int) -> Any:
        """The answer ``want`` to cell ``cell``; answers to earlier cells (left unread when another worker
        failed them) are dropped."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not conn.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError(f"a scale worker did not answer {want!r} in {timeout_s:.0f}s")
            kind, answered, value = conn.recv()
            if answered != cell:
                continue
            if kind == "error":
                raise RuntimeError(value)
            if kind != want:
                raise RuntimeError(f"a scale worker answered {kind!r}, not {want!r}")
            return value

    def cell(self, case: Case, batch: int, threads: int, processes: int, cell_s: float,
             monitor: Callable[[], Any]) -> dict[str, Any]:
        """Frames/s of ``processes`` processes decoding ``case`` together, and the engines' utilisation."""
        row: dict[str, Any] = {"case": case.label, "frames_per_clip": case.frames, "batch": batch, "threads": threads,
                               "processes": processes}
        active = self.conns[:processes]
        self.cell_no += 1
        cell = self.cell_no
        try:
            for conn in active:
                conn.send(("prepare", cell, case, batch, threads))
            builds = [self._recv(conn, 120.0, "ready", cell) for conn in active]
            with monitor() as busy:
                start_at = time.time() + 0.25
                for conn in active:
                    conn.send(("go", cell, start_at, cell_s))
                got = [self._recv(conn, 60.0 + 10 * cell_s, "done", cell) for conn in active]
        except Exception as exc:  # noqa: BLE001 - reported in the row
            return {**row, "error": f"{type(exc).__name__}: {str(exc)[:400]}"}
        seconds = max(g["end"] for g in got) - min(g["start"] for g in got)
        frames = sum(g["frames"] for g in got)
        per_process = [round(g["frames"] / (g["end"] - g["start"]), 1) for g in got]
        return {**row, "build_s": round(max(builds), 3), "runs": sum(g["runs"] for g in got), "frames": frames,
                "seconds": round(seconds, 3), "frames_per_s": round(frames / seconds, 1),
                "per_process_frames_per_s": per_process, **busy.summary()}

    def close(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError, BrokenPipeError):
                conn.send(("stop",))
        for proc in self.procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.terminate()
