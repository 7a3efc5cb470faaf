"""``processes``: the samplers run in child processes and answer exactly as they do in-process.

Checked with the ``cpu`` backend and with the gpu engine on DALI's CPU decoder (the same machinery as
NVDEC), frame by frame against the in-process sampler; a child that dies mid-video costs only the video
that kills it; ``@pytest.mark.gpu``: NVDEC children hand over CUDA frames equal to the in-process ones.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import pytest
import torch

from quadvault_dali.errors import BackendUnavailableError, DecodeError, QuadvaultError
from quadvault_dali.sampling import FrameBatch, VideoOutcome, create_sampler
from quadvault_dali.sampling._cpu import CpuSampler
from quadvault_dali.sampling._processes import ProcessSampler
from quadvault_dali.synth import read_stamp

SIZE = 48


class CrashingSampler(CpuSampler):
    """A ``cpu`` sampler whose process dies (SIGKILL, like a segfaulting decoder) when it takes a video whose
    name starts with ``crash``; importable by name, so spawned children can build it."""

    def iter_batches(self, videos: Iterable[object]) -> Iterator[FrameBatch]:
        def watched() -> Iterator[object]:
            for source in videos:
                if Path(str(source)).name.startswith("crash"):
                    os.kill(os.getpid(), signal.SIGKILL)
                yield source

        return super().iter_batches(watched())  # type: ignore[arg-type]


class CrashThenDieStartingSampler(CrashingSampler):
    """``CrashingSampler`` whose next process, started in place of the one a ``crash`` video killed, dies while
    it starts (the marker file says so once per crash)."""

    marker = Path(os.environ.get("QV_START_DEATH_MARKER", "/nonexistent"))

    def __init__(self, *args: object, **kwargs: object) -> None:
        if self.marker.exists() and self.marker.read_text() == "die":
            self.marker.write_text("done")
            os.kill(os.getpid(), signal.SIGKILL)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def iter_batches(self, videos: Iterable[object]) -> Iterator[FrameBatch]:
        def marked() -> Iterator[object]:
            for source in videos:
                if Path(str(source)).name.startswith("crash"):
                    self.marker.write_text("die")
                yield source

        return super().iter_batches(marked())  # type: ignore[arg-type]


class HangingSampler(CpuSampler):
    """A ``cpu`` sampler that hangs for good (like a decoder stuck in native code) when it takes a video whose
    name starts with ``hang``."""

    def iter_batches(self, videos: Iterable[object]) -> Iterator[FrameBatch]:
        def watched() -> Iterator[object]:
            for source in videos:
                if Path(str(source)).name.startswith("hang"):
                    time.sleep(3600)
                yield source

        return super().iter_batches(watched())  # type: ignore[arg-type]


class HalfSentSampler(CpuSampler):
    """A ``cpu`` sampler whose process freezes (SIGSTOP) part-way through sending the first batch after it takes
    a video whose name starts with ``halfsent``: the length and the first bytes of the message are in the pipe,
    the rest never comes."""

    def iter_batches(self, videos: Iterable[object]) -> Iterator[FrameBatch]:
        import struct
        from multiprocessing import connection
        from multiprocessing.reduction import ForkingPickler

        send = connection.Connection.send

        def half_then_frozen(conn: connection.Connection, obj: object) -> None:
            if isinstance(obj, tuple) and obj[0] == "batch":
                data = bytes(ForkingPickler.dumps(obj))
                conn._send(struct.pack("!i", len(data)) + data[:64])  # type: ignore[attr-defined]
                os.kill(os.getpid(), signal.SIGSTOP)
            send(conn, obj)

        def watched() -> Iterator[object]:
            for source in videos:
                if Path(str(source)).name.startswith("halfsent"):
                    connection.Connection.send = half_then_frozen  # type: ignore[method-assign]
                yield source

        return super().iter_batches(watched())  # type: ignore[arg-type]


class TailHangSampler(CpuSampler):
    """A ``cpu`` sampler that hangs once, after its last video of a round and before saying it is done (the
    marker file makes the replacement process behave)."""

    marker = Path(os.environ.get("QV_TAIL_HANG_MARKER", "/nonexistent"))

    def iter_batches(self, videos: Iterable[object]) -> Iterator[FrameBatch]:
        yield from super().iter_batches(videos)  # type: ignore[arg-type]
        if not self.marker.exists():
            self.marker.write_text("hung once")
            time.sleep(3600)


def _by_video(batches: Iterable[FrameBatch]) -> tuple[dict[Path, list[float]], dict[Path, torch.Tensor], list]:
    times: dict[Path, list[float]] = {}
    frames: dict[Path, list[torch.Tensor]] = {}
    outcomes = []
    for b in batches:
        for i, (p, t) in enumerate(zip(b.paths, b.timestamps)):
            times.setdefault(p, []).append(t)
            frames.setdefault(p, []).append(b.frames[i].cpu())
        outcomes.extend(b.completed)
    return times, {p: torch.stack(f) for p, f in frames.items()}, outcomes


def _one_bad_between_two_good(sampler: type, bad: Path, library: list[Path], **pool: object) -> VideoOutcome:
    """``bad`` between two good videos through ``sampler`` in 2 children: every video gets its outcome and the
    good ones the frames and times the in-process sampler gives them. Returns the bad video's outcome."""
    videos = [library[0], bad, library[1]]
    cfg = dict(fps=1.0, mode="exact", size=SIZE, batch_size=2, streams=1, processes=2)
    with ProcessSampler(sampler, **pool, **cfg) as pooled:  # type: ignore[arg-type]
        times, _, outcomes = _by_video(pooled.iter_batches(videos))
    assert sorted(o.path for o in outcomes) == sorted(videos)
    want = _by_video(create_sampler("cpu", **{**cfg, "processes": 1}).iter_batches(library[:2]))[0]
    assert all(o.ok for o in outcomes if o.path != bad) and times == want
    return next(o for o in outcomes if o.path == bad)


@pytest.fixture(scope="module")
def library(make_clip: Callable[..., Path], broken_clips: dict[str, Path]) -> list[Path]:
    good = [make_clip(f"proc_{i}.{ext}", codec=codec, width=128, height=80, fps=fps, duration_s=2.0 + i,
                      source_id=20 + i)
            for i, (codec, ext, fps) in enumerate([("h264", "mp4", 30), ("vp9", "webm", 25), ("hevc", "mp4", 24),
                                                   ("vp9", "webm", 30), ("h264", "mp4", 60)])]
    return good[:2] + [broken_clips["empty"]] + good[2:4] + [broken_clips["truncated"]] + good[4:]


def test_children_give_the_in_process_frames_times_and_outcomes(library: list[Path]) -> None:
    cfg = dict(fps=1.0, mode="exact", size=SIZE, batch_size=4, streams=2)
    want_times, want_frames, want_outcomes = _by_video(create_sampler("cpu", **cfg).iter_batches(library))
    with create_sampler("cpu", processes=2, **cfg) as sampler:
        assert isinstance(sampler, ProcessSampler) and sampler.backend == "cpu"
        batches = list(sampler.iter_batches(library))
        pids = [c.proc.pid for c in sampler._pool.children]
        again = _by_video(sampler.iter_batches(library[:3]))  # a second call: the same children answer it
        assert [c.proc.pid for c in sampler._pool.children] == pids
        twice, _, twice_outcomes = _by_video(sampler.iter_batches([library[0]] * 3))  # benchmarks list copies
        assert len(twice_outcomes) == 3 and sorted(twice[library[0]]) == sorted(want_times[library[0]] * 3)
    assert all(len(b) <= 4 and b.frames.shape[1:] == (3, SIZE, SIZE) for b in batches)
    times, frames, outcomes = _by_video(batches)
    assert sorted(o.path for o in outcomes) == sorted(library)  # exactly one outcome per video
    assert times == want_times
    for path, stack in frames.items():
        assert torch.equal(stack, want_frames[path]), path
        assert all(read_stamp(f.permute(1, 2, 0).numpy()) is not None for f in stack[:1])
    mine = {o.path: o for o in outcomes}
    for want in want_outcomes:
        got = mine[want.path]
        assert (got.ok, got.frames, got.mode, got.bytes_read, got.decoder) == \
               (want.ok, want.frames, want.mode, want.bytes_read, want.decoder)
        if not want.ok:  # the error crossed the process boundary whole: class, path, message
            assert type(got.error) is type(want.error) and got.error.path == want.path
            assert str(got.error) == str(want.error)
    assert again[0] == {p: want_times[p] for p in library[:3] if p in want_times}


def test_a_child_that_dies_costs_only_the_video_that_kills_it(make_clip: Callable[..., Path],
                                                             library: list[Path]) -> None:
    """Streams of 1 and batches of 1: the child has handed over frames of the video before the crasher (its
    outcome is not yet out) when it dies; that video is decoded again without repeating those frames."""
    crasher = make_clip("crash_me.mp4", width=128, height=80, fps=30, duration_s=2.0, source_id=40)
    videos = library[:2] + [crasher] + library[3:5] + library[:1]  # the first video listed twice
    cfg = dict(fps=1.0, mode="exact", size=SIZE, batch_size=1, streams=1, processes=2)
    want_times, _, _ = _by_video(create_sampler("cpu", **{**cfg, "processes": 1}).iter_batches(videos))
    with ProcessSampler(CrashingSampler, **cfg) as sampler:
        times, _, outcomes = _by_video(sampler.iter_batches(videos))
        assert sorted(o.path for o in outcomes) == sorted(videos)
        bad = next(o for o in outcomes if o.path == crasher)
        assert isinstance(bad.error, DecodeError) and "crashed the decoder process (signal 9)" in str(bad.error)
        assert str(crasher) in str(bad.error)
        for o in outcomes:
            if o.path != crasher:
                assert o.ok and sorted(times[o.path]) == sorted(want_times[o.path]), o.path  # none lost or twice
        assert crasher not in times
        # the pool replaced its dead children and still works
        times2, _, outcomes2 = _by_video(sampler.iter_batches(library[:2]))
    want2 = _by_video(create_sampler("cpu", **{**cfg, "processes": 1}).iter_batches(library[:2]))[0]
    assert all(o.ok for o in outcomes2) and times2 == want2


def test_a_replacement_that_dies_starting_is_started_again(make_clip: Callable[..., Path], library: list[Path],
                                                            tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The process started in place of a crashed one died while starting, and the whole scan ended ("decoding
    process 0 exited with code -9 while starting"). It is a death like the others now: another is started."""
    monkeypatch.setenv("QV_START_DEATH_MARKER", str(tmp_path / "marker"))
    crasher = make_clip("crash_then_restart.mp4", width=128, height=80, fps=30, duration_s=2.0, source_id=43)
    bad = _one_bad_between_two_good(CrashThenDieStartingSampler, crasher, library)
    assert (tmp_path / "marker").read_text() == "done"  # a replacement did die starting
    assert "crashed the decoder process" in str(bad.error)


def test_a_child_that_hangs_is_stopped_and_costs_only_its_video(make_clip: Callable[..., Path],
                                                                 library: list[Path]) -> None:
    hanger = make_clip("hang_me.mp4", width=128, height=80, fps=30, duration_s=2.0, source_id=41)
    bad = _one_bad_between_two_good(HangingSampler, hanger, library, hang_s=2.0)
    assert "decoding it hung the decoder (no frame for 2 s: stopped)" in str(bad.error)


def test_a_child_frozen_part_way_through_a_message_is_stopped(make_clip: Callable[..., Path],
                                                              library: list[Path]) -> None:
    """A child stopped mid-send held the parent in recv() for good (the hang limit was only checked between
    messages) and the other children blocked on their full pipes: the whole scan hung. The receive is watched
    now: the child is killed after the hang limit and only its video is lost."""
    frozen = make_clip("halfsent.mp4", width=128, height=80, fps=30, duration_s=2.0, source_id=42)
    bad = _one_bad_between_two_good(HalfSentSampler, frozen, library, hang_s=2.0)
    assert bad.error is not None and "hung" in str(bad.error)


def test_a_child_that_hangs_before_saying_done_is_replaced(library: list[Path], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QV_TAIL_HANG_MARKER", str(tmp_path / "hung"))
    cfg = dict(fps=1.0, mode="exact", size=SIZE, batch_size=4, streams=1, processes=2)
    want = _by_video(create_sampler("cpu", **{**cfg, "processes": 1}).iter_batches(library[:3]))[0]
    with ProcessSampler(TailHangSampler, hang_s=2.0, **cfg) as sampler:
        times, _, outcomes = _by_video(sampler.iter_batches(library[:3]))
    assert (tmp_path / "hung").exists() and times == want
    assert sorted(o.path for o in outcomes) == sorted(library[:3])


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts open files in /proc")
def test_frames_kept_by_the_caller_hold_no_open_files(library: list[Path]) -> None:
    """CPU frames travel inside the messages: a caller that keeps every batch (``sample_video`` does) must
    not hold a file descriptor per batch, which ran a long video into the open-file limit."""
    with create_sampler("cpu", processes=2, fps=1.0, mode="exact", size=SIZE, batch_size=1, streams=1) as sampler:
        list(sampler.iter_batches(library[:1]))  # the children are up
        before = len(os.listdir("/proc/self/fd"))
        kept = list(sampler.iter_batches(library))
        after = len(os.listdir("/proc/self/fd"))
    assert len(kept) > 20 and after - before < 5


def test_the_gpu_engine_runs_in_children(make_clip: Callable[..., Path]) -> None:
    """The DALI engine itself (here on DALI's CPU decoder) in two children: the same frames as in-process."""
    pytest.importorskip("nvidia.dali")
    from quadvault_dali.sampling._gpu import DaliSampler

    videos = [make_clip(f"proc_dali_{i}.webm", codec="vp9", width=128, height=80, fps=30, duration_s=3.0,
                        source_id=30 + i) for i in range(4)]
    cfg = dict(fps=1.0, mode="keyframe", size=SIZE, batch_size=8, streams=1)
    want_times, want_frames, _ = _by_video(DaliSampler(**cfg).iter_batches(videos))
    with ProcessSampler(DaliSampler, processes=2, attrs={"clips_per_run": 2}, **cfg) as sampler:
        times, frames, outcomes = _by_video(sampler.iter_batches(videos))
        counts = sampler.decode_stats.as_dict()
    assert times == want_times and all(o.ok and o.decoder == "dali-cpu" for o in outcomes)
    for path, stack in frames.items():
        assert torch.equal(stack, want_frames[path])
    # the children's DALI counts reach the parent (the benchmarks' frames per DALI sample for process layouts)
    assert counts["frames_returned"] == sum(len(t) for t in times.values()) and 1 <= counts["dali_samples"] <= 12
    assert sampler.queued_bytes_peak > 0


def test_a_child_sends_at_most_a_few_batches_the_parent_has_not_copied(make_clip: Callable[..., Path]) -> None:
    """Every unread batch holds the child's GPU memory, and a pipe buffers ~90 small CUDA messages: a child
    with a slow consumer ran that far ahead. It now waits for the parent's ack after MAX_UNACKED."""
    import multiprocessing
    import threading

    from quadvault_dali.sampling._process_child import ACK, MAX_UNACKED, serve

    video = make_clip("proc_acks.mp4", width=96, height=64, fps=10, duration_s=8.0, keyframe_interval_s=1.0)
    parent, child = multiprocessing.Pipe()
    server = threading.Thread(target=serve, args=(CpuSampler(mode="keyframe", size=SIZE, batch_size=1), child),
                              daemon=True)
    server.start()
    parent.send((1, str(video)))
    parent.send((None, None))
    got, frames = [], 0
    while parent.poll(3.0):
        kind, payload = parent.recv()
        got.append(kind)
        frames += len(payload[0]) if kind == "batch" else 0
    assert got.count("batch") == MAX_UNACKED  # 8 one-frame batches to send; it stopped after 4, unacked
    for _ in range(MAX_UNACKED):
        parent.send(ACK)
    while True:
        assert parent.poll(10.0), "the child did not go on after the acks"
        kind, payload = parent.recv()
        got.append(kind)
        if kind == "batch":
            frames += len(payload[0])
            parent.send(ACK)
        if kind == "done":
            break
    assert frames == 8 and got[0] == "took" and isinstance(payload, dict)
    parent.close()
    server.join(timeout=10)


def test_a_backend_that_cannot_run_fails_in_the_callers_process() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(BackendUnavailableError):
        create_sampler("gpu", processes=2)


class _CudaDeviceSampler(CpuSampler):
    """A backend that says its frames land on a GPU (nothing is decoded: only the warning is under test)."""

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", 0)


def test_processes_on_the_gpu_warn_that_they_crashed_there(caplog: pytest.LogCaptureFixture) -> None:
    """On the H200 the children's DALI decoders died with an illegal address and were 2-6x slower: a user
    asking for them on the GPU is told so; on the CPU they are what they are for, crash isolation."""
    from quadvault_dali.sampling._processes import GPU_WARNING

    with caplog.at_level("WARNING"):
        ProcessSampler(_CudaDeviceSampler, processes=2).close()
    assert GPU_WARNING in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        ProcessSampler(CpuSampler, processes=2).close()
    assert GPU_WARNING not in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):  # FFmpeg's decode client: processes are its fastest layout (stop 25)
        ProcessSampler(_CudaDeviceSampler, processes=2, decode_client="ffmpeg").close()
    assert GPU_WARNING not in caplog.text


def test_the_ffmpeg_decode_client_on_the_cpu_backend_says_it_is_not_used(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING"):
        create_sampler("cpu", decode_client="ffmpeg").close()
    assert "the ffmpeg decode client decodes on NVDEC: not used by the cpu backend" in caplog.text


def test_processes_must_be_positive() -> None:
    with pytest.raises(ValueError, match="processes"):
        create_sampler("cpu", processes=0)


def test_errors_cross_processes_whole() -> None:
    import pickle

    from quadvault_dali.errors import LabelsError

    err = LabelsError("bad labels", path="/x/labels.json", problems=["a missing", "b twice"], hint="fix them")
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is LabelsError and str(back) == str(err)
    assert (back.path, back.problems, back.hint, back.reason) == (err.path, err.problems, err.hint, err.reason)
    assert isinstance(pickle.loads(pickle.dumps(QuadvaultError("plain"))), QuadvaultError)


def test_the_ffmpeg_clients_counts_in_children_reach_the_parent(make_clip: Callable[..., Path]) -> None:
    """The FFmpeg decode client (its CPU stand-in here) in two children: the same frames as in-process, and the
    children's decoder opens and drains reach the parent, so a lease's process rows say what their decoders did
    (stop 25's H200 rows said 0 NVDEC pictures for children that decoded on NVDEC)."""
    from quadvault_dali.sampling._gpu import DaliSampler

    videos = [make_clip(f"proc_ffclient_{i}.mp4", width=128, height=80, fps=30, duration_s=3.0, source_id=70 + i)
              for i in range(4)]
    cfg = dict(fps=1.0, mode="keyframe", size=SIZE, batch_size=8, streams=1, decode_client="ffmpeg")
    want_times, want_frames, _ = _by_video(DaliSampler(**cfg).iter_batches(videos))
    with ProcessSampler(DaliSampler, processes=2, **cfg) as sampler:
        times, frames, outcomes = _by_video(sampler.iter_batches(videos))
        counts = sampler.decode_stats.as_dict()
    assert times == want_times and all(o.ok for o in outcomes)
    for path, stack in frames.items():
        assert torch.equal(stack, want_frames[path])
    assert counts["frames_returned"] == 12 and counts["dali_samples"] == 4  # a sample per clip, one clip per video
    assert 1 <= counts["decoder_opens"] <= 2 and counts["drains"] >= 1  # one decoder per child that took work
    assert counts["frames_on_device"] == 0  # FFmpeg's CPU decoders: no NVDEC picture claimed


@pytest.mark.gpu
def test_nvdec_children_hand_over_cuda_frames(make_clip: Callable[..., Path]) -> None:
    videos = [make_clip(f"proc_gpu_{i}.mp4", codec=codec, width=640, height=360, fps=30, duration_s=4.0,
                        source_id=50 + i) for i, codec in enumerate(["h264", "hevc", "h264", "hevc"])]
    cfg = dict(fps=1.0, mode="keyframe", size=SIZE, batch_size=8, streams=2)
    want_times, want_frames, _ = _by_video(create_sampler("gpu", **cfg).iter_batches(videos))
    with create_sampler("gpu", processes=2, **cfg) as sampler:
        batches = list(sampler.iter_batches(videos))
    assert all(b.frames.is_cuda for b in batches if len(b))
    times, frames, outcomes = _by_video(batches)
    assert times == want_times and all(o.ok and o.decoder == "nvdec" for o in outcomes)
    for path, stack in frames.items():
        assert torch.equal(stack, want_frames[path])
    # the FFmpeg client in children: NVDEC's pictures, counted there and reported here
    with create_sampler("gpu", processes=2, decode_client="ffmpeg", **cfg) as sampler:
        times, frames, outcomes = _by_video(sampler.iter_batches(videos))
        counts = sampler.decode_stats.as_dict()
    assert times == want_times and all(o.ok and o.decoder == "nvdec" for o in outcomes)
    assert counts["frames_on_device"] == sum(len(t) for t in times.values()) and counts["decoder_opens"] >= 2
    for path, stack in frames.items():  # NVDEC's pictures converted by the client: near DALI's, not equal
        assert (stack.float() - want_frames[path].float()).abs().mean() < 4.0, path.name


class CrashingGpuSampler:
    """Built in the child as a ``GpuSampler`` (importable here without CUDA): dies like a segfaulting NVDEC
    when it takes a video named ``crash*``, after CUDA batches of earlier videos went to the parent."""

    def __new__(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        from quadvault_dali.sampling._gpu import GpuSampler

        class _Crashing(GpuSampler):
            def iter_batches(self, videos):  # type: ignore[no-untyped-def]
                # dies on the first frame of a crash* video: earlier videos' CUDA batches have gone out (the
                # gpu backend takes videos far ahead, so dying as it takes one would send nothing first)
                for batch in super().iter_batches(videos):
                    if any(Path(str(p)).name.startswith("crash") for p in batch.paths):
                        os.kill(os.getpid(), signal.SIGKILL)
                    yield batch

        return _Crashing(*args, **kwargs)


@pytest.mark.gpu
def test_an_nvdec_child_that_dies_with_cuda_frames_in_flight_costs_only_its_video(
        make_clip: Callable[..., Path]) -> None:
    """CUDA frames of a child that dies are never mapped after its death: the parent copies each batch as it
    reads it and drops a dead child's unread ones (its videos are decoded again); every other video still
    gets exactly its own seconds, and the parent's CUDA context survives."""
    videos = [make_clip(f"proc_gpu_{i}.mp4", codec=codec, width=640, height=360, fps=30, duration_s=4.0,
                        source_id=50 + i) for i, codec in enumerate(["h264", "hevc", "h264", "hevc"])]
    crasher = make_clip("crash_gpu.mp4", codec="h264", width=640, height=360, fps=30, duration_s=2.0, source_id=59)
    order = videos[:2] + [crasher] + videos[2:]
    cfg = dict(fps=1.0, mode="keyframe", size=SIZE, batch_size=1, streams=1)
    want_times, want_frames, _ = _by_video(create_sampler("gpu", **cfg).iter_batches(videos))
    with ProcessSampler(CrashingGpuSampler, processes=2, **cfg) as sampler:  # type: ignore[arg-type]
        times, frames, outcomes = _by_video(sampler.iter_batches(order))
    assert sorted(o.path for o in outcomes) == sorted(order)
    bad = next(o for o in outcomes if o.path == crasher)
    assert isinstance(bad.error, DecodeError) and "crashed the decoder process" in str(bad.error)
    for path in videos:
        assert sorted(times[path]) == sorted(want_times[path]), path  # none lost, none twice
        ordered = torch.stack([f for _, f in sorted(zip(times[path], frames[path]), key=lambda x: x[0])])
        assert torch.equal(ordered, want_frames[path]), path
    torch.cuda.synchronize()  # the parent's context is intact


def test_a_killed_childs_shared_memory_files_are_removed(tmp_path: Path) -> None:
    """torch names a process's CUDA IPC files ``torch_<pid>_...``; a killed child leaves them in /dev/shm."""
    from quadvault_dali.sampling._processes import remove_shared_files

    for name in ("torch_4242_1_0", "torch_4242_77_3", "torch_42421_1_0", "other_4242"):
        (tmp_path / name).write_bytes(b"x")
    assert remove_shared_files(4242, shm=tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other_4242", "torch_42421_1_0"]
    assert remove_shared_files(None, shm=tmp_path) == 0
