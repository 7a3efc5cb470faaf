"""Clips cut in worker processes (``SamplerConfig.prepare_processes``) give what the prepare threads give, and
a worker that dies costs only the video it was cutting. Run on DALI's CPU decoder (VP9/MJPEG), the same
machinery the gpu backend uses."""

from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from quadvault_dali.sampling._gpu import DaliSampler
from quadvault_dali.sampling._prepare_pool import PreparePool, serve

SIZE = 32


@pytest.fixture(scope="module")
def videos(make_clip: Callable[..., Path]) -> list[Path]:
    return [
        make_clip("pp_vp9_30.mp4", codec="vp9", width=96, height=64, fps=30, duration_s=4.0, source_id=21),
        make_clip("pp_vp9_25_k2.mp4", codec="vp9", width=96, height=64, fps=25, duration_s=5.0,
                  keyframe_interval_s=2.0, source_id=22),
        make_clip("pp_mjpeg_10.mkv", codec="mjpeg", width=96, height=64, fps=10, duration_s=3.0, source_id=23),
        make_clip("pp_h264_30.mp4", codec="h264", width=96, height=64, fps=30, duration_s=3.0, source_id=24),
    ]


def _run(sampler: DaliSampler, paths: list[Path]) -> dict[str, Any]:
    """Per video: its timestamps, frame checksums and outcome, as the consumer saw them."""
    seen: dict[str, Any] = {}
    for batch in sampler.iter_batches(paths):
        for path, stamp, frame in zip(batch.paths, batch.timestamps, batch.frames):
            seen.setdefault(str(path), {"times": [], "frames": []})
            seen[str(path)]["times"].append(stamp)
            seen[str(path)]["frames"].append(int(frame.to(torch.int64).sum()))
        for o in batch.completed:
            seen.setdefault(str(o.path), {"times": [], "frames": []})["outcome"] = (
                o.frames, o.frames_expected, o.mode, o.decoder, o.bytes_read, type(o.error).__name__ if o.error else None,
                str(o.error).split(": ", 1)[-1] if o.error else None)
    return seen


@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_workers_cut_what_the_threads_cut(videos: list[Path], broken_clips: dict[str, Path], tmp_path: Path,
                                          mode: str) -> None:
    """The same frames, times, modes, decoders, bytes read and errors (a text file, a truncated one, a
    missing one, H.264 that DALI's CPU decoder hands to PyAV), in the same order."""
    paths = [videos[0], broken_clips["text"], videos[1], videos[2], broken_clips["truncated"], videos[3],
             tmp_path / "missing.mp4"]
    threads = _run(DaliSampler(mode=mode, size=SIZE, batch_size=5, streams=2), paths)
    sampler = DaliSampler(mode=mode, size=SIZE, batch_size=5, streams=2, prepare_processes=2)
    try:
        workers = _run(sampler, paths)
        pool = sampler._prepare_pool
        assert workers == threads
        assert [threads[str(p)]["outcome"][5] is None for p in paths] == [True, False, True, True, False, True, False]
        again = _run(sampler, paths[:1])  # the workers are kept between runs
        assert sampler._prepare_pool is pool and again[str(paths[0])] == threads[str(paths[0])]
    finally:
        sampler.close()
    assert pool is not None and all(not w.proc.is_alive() for w in pool._all + list(pool._idle.queue))


def _serve_misbehaving_on(marker: str, misbehave: Callable[[], None], conn: Any) -> None:
    """A worker that runs ``misbehave`` instead of cutting any path whose name holds ``marker``."""
    import quadvault_dali.sampling._prepare_pool as pp

    real = pp.cut_one

    def cut_one(conn: Any, path: Path, settings: Any) -> None:
        if marker in path.name:
            misbehave()
        real(conn, path, settings)

    pp.cut_one = cut_one
    serve(conn)


def _exit_3() -> None:
    os._exit(3)


def _sleep_forever() -> None:
    while True:
        time.sleep(60)


#: dies the way a decoder crashing on a damaged file kills it, on any path with 'crash'
crashing_serve = functools.partial(_serve_misbehaving_on, "crash", _exit_3)
#: stuck in native code on one file (a stalled disk): never answers for a path with 'hang'
hanging_serve = functools.partial(_serve_misbehaving_on, "hang", _sleep_forever)


def test_a_worker_that_dies_costs_only_its_video(videos: list[Path], tmp_path: Path) -> None:
    crash = tmp_path / "crash_here.mp4"
    crash.write_bytes(videos[0].read_bytes())
    sampler = DaliSampler(mode="keyframe", size=SIZE, batch_size=5, streams=2, prepare_processes=2)
    sampler._prepare_pool = PreparePool(2, target=crashing_serve)
    try:
        seen = _run(sampler, [videos[0], crash, videos[1], crash, videos[2]])
    finally:
        sampler._prepare_pool.close()
    assert seen[str(crash)]["outcome"][5] == "PrepareWorkerDied" and "exit code 3" in seen[str(crash)]["outcome"][6]
    for path in (videos[0], videos[1], videos[2]):
        assert seen[str(path)]["outcome"][5] is None and seen[str(path)]["times"]


def test_a_replacement_started_during_a_run_serves_the_next_run(videos: list[Path], tmp_path: Path) -> None:
    """Replacements start on prepare threads, which end with the run: a worker bound to its starting thread
    (PR_SET_PDEATHSIG) was killed then, and the next run's healthy video failed as 'died (signal 9)'."""
    crash = tmp_path / "crash_here.mp4"
    crash.write_bytes(videos[0].read_bytes())
    sampler = DaliSampler(mode="keyframe", size=SIZE, batch_size=5, streams=1, prepare_processes=1)
    sampler._prepare_pool = PreparePool(1, target=crashing_serve)
    try:
        first = _run(sampler, [crash])
        second = _run(sampler, [videos[0], videos[1]])
    finally:
        sampler._prepare_pool.close()
    assert first[str(crash)]["outcome"][5] == "PrepareWorkerDied"
    assert all(second[str(p)]["outcome"][5] is None and second[str(p)]["times"] for p in videos[:2])


def dead_on_arrival(conn: Any) -> None:
    os._exit(4)


def test_a_worker_that_cannot_be_restarted_leaves_the_videos_to_the_thread(videos: list[Path], tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    """The pool shrank for good and the next video waited for a worker forever; now it is cut in its thread."""
    crash = tmp_path / "crash_here.mp4"
    crash.write_bytes(videos[0].read_bytes())
    sampler = DaliSampler(mode="keyframe", size=SIZE, batch_size=5, streams=1, prepare_processes=1)
    pool = sampler._prepare_pool = PreparePool(1, target=crashing_serve)
    pool._target = dead_on_arrival  # every replacement dies at start
    try:
        with caplog.at_level("WARNING"):
            seen = _run(sampler, [crash, videos[0], videos[1]])
    finally:
        pool.close()
    assert not pool.usable and "cut in this process" in caplog.text
    assert seen[str(crash)]["outcome"][5] == "PrepareWorkerDied"
    assert all(seen[str(p)]["outcome"][5] is None and seen[str(p)]["times"] for p in videos[:2])


def test_a_stopped_run_does_not_wait_for_a_hung_worker(videos: list[Path], tmp_path: Path) -> None:
    import threading

    hang = tmp_path / "hang_here.mp4"
    hang.write_bytes(videos[0].read_bytes())
    sampler = DaliSampler(mode="keyframe", size=SIZE, batch_size=2, streams=1, prepare_processes=2)
    pool = sampler._prepare_pool = PreparePool(2, target=hanging_serve)

    def consume_a_little() -> None:
        for batch in sampler.iter_batches([videos[0], hang, videos[1]]):
            if len(batch):
                break  # the consumer leaves: the generator closes, the run stops

    consumer = threading.Thread(target=consume_a_little, daemon=True)
    consumer.start()
    consumer.join(timeout=60)
    try:
        assert not consumer.is_alive(), "the run waited for the hung worker"
    finally:
        pool.close()


def test_workers_that_cannot_start_leave_the_run_to_threads(videos: list[Path], monkeypatch: pytest.MonkeyPatch,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    import quadvault_dali.sampling._prepare_pool as pp

    monkeypatch.setattr(pp.PreparePool.__init__, "__defaults__", (dead_on_arrival,))
    sampler = DaliSampler(mode="keyframe", size=SIZE, batch_size=5, streams=1, prepare_processes=2)
    with caplog.at_level("WARNING"):
        seen = _run(sampler, videos[:2])
    assert sampler._prepare_pool is None and "cut in this process instead" in caplog.text
    assert all(seen[str(p)]["outcome"][5] is None and seen[str(p)]["times"] for p in videos[:2])


def test_a_busy_worker_exits_when_its_parent_is_killed(videos: list[Path], tmp_path: Path) -> None:
    """A worker stuck on a file never reads its pipe's EOF: it watches for its parent and exits anyway."""
    import subprocess
    import sys

    hang = tmp_path / "hang_here.mp4"
    hang.write_bytes(videos[0].read_bytes())
    script = tmp_path / "parent.py"
    script.write_text(f"""
import os, sys, time
sys.path[:0] = {sys.path!r}
from quadvault_dali.sampling._prepare_pool import CutSettings, PreparePool
from test_prepare_pool import hanging_serve
if __name__ == "__main__":
    pool = PreparePool(1, target=hanging_serve)
    worker = pool._idle.get()
    worker.conn.send(({str(hang)!r}, CutSettings(1.0, "keyframe", False, 1 << 20)))
    print(worker.proc.pid, flush=True)
    time.sleep(1)
    os._exit(0)  # as kill -9 would: no cleanup at all
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    pid = int(proc.stdout.split()[0])
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.2)
    assert not _running(pid), "the worker outlived its parent"


def _running(pid: int) -> bool:
    """Alive and not a zombie (a reparented zombie waits for its new parent to reap it)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_decoding_children_get_no_prepare_workers() -> None:
    """Decoding processes are daemonic, and a daemonic process may not start children."""
    from quadvault_dali.sampling._cpu import CpuSampler
    from quadvault_dali.sampling._processes import ProcessSampler

    sampler = ProcessSampler(CpuSampler, processes=2, prepare_processes=3)
    assert sampler.child_config.prepare_processes == 0 and sampler.config.prepare_processes == 3
    sampler.close()


def test_prepare_processes_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="prepare_processes"):
        DaliSampler(prepare_processes=-1)


def test_a_worker_imports_neither_torch_nor_dali() -> None:
    """What a worker imports to cut clips (and what the scan's entry points import, which spawn re-imports in
    every worker): no PyTorch, no DALI. With them, each worker took 2.6 s to start here, and 4 workers started
    one after another on a cold page cache took 15 s of a 19-s scan on the H100."""
    import subprocess
    import sys

    code = ("import sys; import quadvault_dali.sampling._prepare_pool, quadvault_dali.cli.main; "
            "heavy = sorted(m for m in ('torch', 'nvidia.dali') if m in sys.modules); print(heavy)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_package_still_offers_every_backend_by_name() -> None:
    """The package loads its names on first use; a backend is there as soon as a sampler is asked for."""
    import quadvault_dali.sampling as sampling

    assert "cpu" in sampling.available_backends()
    assert type(sampling.create_sampler("cpu")).__name__ == "CpuSampler"
    assert sampling.plan_samples.__module__.endswith("_plan")
    with pytest.raises(AttributeError):
        sampling.not_a_name  # noqa: B018


def first_hangs_the_rest_die(conn: Any) -> None:
    """A worker target: the first worker to start never gets ready (a stalled import), the others exit."""
    try:
        os.close(os.open(os.environ["QV_TEST_MARKER"], os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        os._exit(3)
    while True:
        time.sleep(60)


def test_a_worker_that_dies_while_another_hangs_at_start_fails_the_pool_at_once(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers were waited for in the order they started: a hung first one hid a dead second one for the
    whole start timeout (300 s), and a pool that failed to start left the others running."""
    import multiprocessing as mp
    import threading

    from quadvault_dali.errors import QuadvaultError

    monkeypatch.setenv("QV_TEST_MARKER", str(tmp_path / "first"))
    raised: list[BaseException] = []

    def start() -> None:
        try:
            PreparePool(3, target=first_hangs_the_rest_die)
        except BaseException as exc:  # noqa: BLE001 - what the test looks at
            raised.append(exc)

    starter = threading.Thread(target=start, daemon=True)
    starter.start()
    starter.join(timeout=60)
    assert not starter.is_alive(), "the pool waited for the hung worker"
    assert len(raised) == 1 and isinstance(raised[0], QuadvaultError) and "exited with code 3" in str(raised[0])
    assert mp.active_children() == []


def test_a_backend_registered_first_keeps_its_name() -> None:
    """With the backends loaded on first use, the built-in ``cpu`` replaced one a plugin registered before."""
    import subprocess
    import sys

    code = """
import sys
import quadvault_dali.sampling as sampling

@sampling.register_backend("cpu")
class Mine(sampling.Sampler):
    def device(self): return None
    def iter_batches(self, videos): return iter(())

assert "quadvault_dali.sampling._cpu" not in sys.modules  # registered before the built-in one loads
print(type(sampling.create_sampler("cpu")).__name__, sorted(sampling.available_backends())[0])
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Mine", "cpu"]


def test_prepare_processes_the_backend_cannot_use_are_said_to_be_unused(caplog: pytest.LogCaptureFixture) -> None:
    """``scan --device cpu --prepare-processes 2`` (or with ``--processes``) ran without a word that the workers
    were never started."""
    from quadvault_dali.sampling import create_sampler

    with caplog.at_level("WARNING"):
        sampler = create_sampler("cpu", prepare_processes=2)
    assert type(sampler).__name__ == "CpuSampler" and "not used by the cpu backend" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        create_sampler("cpu", prepare_processes=0)
    assert "prepare processes" not in caplog.text
