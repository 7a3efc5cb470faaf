"""The in-flight journal: which videos a dead scan had started, per --shard tag and per GPU worker."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from quadvault_dali.scan.crashguard import (CrashJournal, StallWatch, check_in_child, check_videos, journal_path,
                                            take_suspects)


def _journal(out: Path, tag: str, started: list[str], finished: list[str]) -> None:
    journal = CrashJournal(out, tag)
    for name in started:
        journal.started(Path(f"/lib/{name}"))
    for name in finished:
        journal.finished(Path(f"/lib/{name}"))
    journal._fh.close()  # the process "dies": the file stays


def test_suspects_are_started_but_unfinished_videos_of_this_tag_and_its_workers(tmp_path: Path) -> None:
    _journal(tmp_path, "", ["a.mp4", "b.mp4", "c.mp4"], ["a.mp4"])
    _journal(tmp_path, "g1", ["d.mp4", "e.mp4"], ["e.mp4"])
    _journal(tmp_path, "s00of02", ["x.mp4"], [])
    _journal(tmp_path, "s00of02-g0", ["y.mp4"], [])
    assert sorted(p.name for p in take_suspects(tmp_path, "")) == ["b.mp4", "c.mp4", "d.mp4"]
    assert not journal_path(tmp_path, "g1").exists()  # merged into this tag's journal
    # Suspects stay suspects until this run settles them: a Ctrl-C or crash now must not forget them.
    assert sorted(p.name for p in take_suspects(tmp_path, "")) == ["b.mp4", "c.mp4", "d.mp4"]
    journal = CrashJournal(tmp_path, "")
    journal.finished(Path("/lib/b.mp4"))  # e.g. its crash row is on disk
    assert sorted(p.name for p in take_suspects(tmp_path, "")) == ["c.mp4", "d.mp4"]
    journal.discard()  # the run ended in Python
    assert take_suspects(tmp_path, "") == []
    assert sorted(p.name for p in take_suspects(tmp_path, "s00of02")) == ["x.mp4", "y.mp4"]


def test_file_names_with_line_breaks_and_undecodable_bytes_survive_the_journal(tmp_path: Path) -> None:
    odd = [Path("/footage/clip\nnight.mp4"), Path("/footage/caf\udce9.mp4"), Path("/footage/a\u2028b.mp4")]
    journal = CrashJournal(tmp_path, "")
    for path in odd:
        journal.started(path)
    journal._fh.close()  # type: ignore[union-attr]  # the process died here
    assert take_suspects(tmp_path, "") == odd


def test_a_run_that_ends_in_python_leaves_no_journal(tmp_path: Path) -> None:
    journal = CrashJournal(tmp_path, "")
    journal.started(Path("/lib/a.mp4"))
    assert journal.path.is_file()
    journal.discard()
    assert not journal.path.exists() and take_suspects(tmp_path, "") == []


def test_isolated_check_passes_ordinary_bad_files(tmp_path: Path, broken_clips: dict[str, Path],
                                                  make_clip) -> None:  # type: ignore[no-untyped-def]
    """A file that only raises a QuadvaultError does not crash the decoder: the scan records it itself."""
    good = make_clip("guard_ok.mp4", duration_s=2.0)
    for path in (good, broken_clips["truncated"], broken_clips["text"]):
        assert check_in_child(path, device="cpu", mode="auto", fps=1.0, size=64) is None


def test_a_stall_names_the_videos_in_flight_and_keeps_the_journal(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """A hung decoder: the warning says which videos, and a Ctrl-C afterwards still leaves them suspects."""
    journal = CrashJournal(tmp_path, "")
    journal.started(Path("/lib/done.mp4"))
    journal.finished(Path("/lib/done.mp4"))
    journal.started(Path("/lib/hangs.mp4"))
    with caplog.at_level(logging.WARNING), StallWatch(journal, stall_s=0.2):
        deadline = time.monotonic() + 5
        while not journal.keep and time.monotonic() < deadline:
            time.sleep(0.02)
    assert journal.keep
    warning = " ".join(r.getMessage() for r in caplog.records)
    assert "/lib/hangs.mp4" in warning and "/lib/done.mp4" not in warning and "run the same command" in warning
    journal.discard()  # as after KeyboardInterrupt
    assert take_suspects(tmp_path, "") == [Path("/lib/hangs.mp4")]


def test_steady_progress_is_not_a_stall(tmp_path: Path) -> None:
    journal = CrashJournal(tmp_path, "")
    journal.started(Path("/lib/a.mp4"))
    with StallWatch(journal, stall_s=0.3) as watch:
        for _ in range(20):
            watch.beat()
            time.sleep(0.03)
    assert not journal.keep


HANG_HOOK = '''
import os, time
if os.environ.get("QV_TEST_DECODER"):
    import quadvault_dali.sampling._cpu as _cpu
    real = _cpu.CpuSampler.decode_video
    def decode_video(self, path, outcome, emit, **kw):
        if os.environ["QV_TEST_DECODER"] == "hang":
            time.sleep(60)
        def slow(item):  # a long file on a slow CPU: a frame every 0.5 s, the whole check far past stall_s
            time.sleep(0.5)
            emit(item)
        return real(self, path, outcome, slow, **kw)
    _cpu.CpuSampler.decode_video = decode_video
'''


def _with_decoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, behaviour: str) -> None:
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(HANG_HOOK)
    monkeypatch.setenv("QV_TEST_DECODER", behaviour)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))


def test_isolated_check_reports_a_hang(tmp_path: Path, make_clip, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    _with_decoder(tmp_path, monkeypatch, "hang")
    why = check_in_child(make_clip("guard_hang.mp4", duration_s=1.0), device="cpu", mode="auto", fps=1.0, size=64,
                         stall_s=8.0)
    assert why is not None and "no frame came for 8 s" in why


def test_a_slow_but_steady_check_is_not_a_hang(tmp_path: Path, make_clip, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """A long video decoded slowly takes longer than any fixed limit: only a silence means a hang."""
    _with_decoder(tmp_path, monkeypatch, "slow")
    started = time.monotonic()
    # a frame every 0.5 s for 12 s; stall_s leaves the child's start-up (torch's import: seconds on a loaded CI
    # machine) room, since the limit counts from the start
    why = check_in_child(make_clip("guard_slow.mp4", duration_s=12.0, fps=10), device="cpu", mode="exact", fps=1.0,
                         size=64, stall_s=6.0)
    assert why is None
    assert time.monotonic() - started > 6.0  # it really ran past stall_s


CRASH_HOOK = '''
import os, signal
if os.environ.get("QV_TEST_CRASH_ON"):
    with open(os.environ["QV_TEST_STARTS"], "a") as fh:  # one line per process start
        fh.write("start\\n")
    import quadvault_dali.sampling._cpu as _cpu
    real = _cpu.CpuSampler.decode_video
    def decode_video(self, path, outcome, emit, **kw):
        once = os.environ.get("QV_TEST_ONCE")  # a marker file: the signal comes the first time only
        if path.name in os.environ["QV_TEST_CRASH_ON"].split(",") and not (once and os.path.exists(once)):
            if once:
                open(once, "w").close()
            os.kill(os.getpid(), getattr(signal, os.environ.get("QV_TEST_SIGNAL", "SIGSEGV")))
        if path.name == os.environ.get("QV_TEST_EXIT_ON"):  # a native library calling exit()
            os._exit(3)
        return real(self, path, outcome, emit, **kw)
    _cpu.CpuSampler.decode_video = decode_video
    real_batches = _cpu.CpuSampler.iter_batches
    def iter_batches(self, videos):  # a Python error escaping the sampler: no crash, the next video goes on
        videos = list(videos)
        if any(str(v).endswith(os.environ.get("QV_TEST_RAISE_ON", "-")) for v in videos):
            raise RuntimeError("a bug, not a crash")
        return real_batches(self, videos)
    _cpu.CpuSampler.iter_batches = iter_batches
'''


def test_many_suspects_share_a_child_and_only_the_crashers_are_blamed(tmp_path: Path, make_clip,  # type: ignore[no-untyped-def]
                                                                    broken_clips: dict[str, Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A kill -9 of a GPU scan leaves every queued video (~100) a suspect: one child process each took
    minutes to resume. One child now takes them in turn; a crash costs one more start, on the next video."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASH_HOOK)
    starts = tmp_path / "starts.log"
    monkeypatch.setenv("QV_TEST_CRASH_ON", "guard_c1.mp4,guard_c3.mp4")
    monkeypatch.setenv("QV_TEST_RAISE_ON", "guard_c2.mp4")  # between the two crashers
    monkeypatch.setenv("QV_TEST_EXIT_ON", "guard_c4.mp4")
    monkeypatch.setenv("QV_TEST_STARTS", str(starts))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    clips = [make_clip(f"guard_c{i}.mp4", duration_s=1.0, source_id=i) for i in range(5)]
    videos = [clips[0], clips[1], broken_clips["text"], clips[2], clips[3], clips[4]]
    verdicts = check_videos(videos, device="cpu", mode="auto", fps=1.0, size=64)
    assert set(verdicts) == {clips[1], clips[3], clips[4]}
    assert all("the decoder crashed on this file (SIGSEGV)" in verdicts[c] for c in (clips[1], clips[3]))
    assert "the decoder process exited with code 3 on this file" in verdicts[clips[4]]
    assert starts.read_text().count("start") == 3  # one child, one more after each crash (c4 is the last)


def test_the_check_runs_this_interpreters_code_whatever_the_working_directory_holds(
        tmp_path: Path, make_clip, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """``python -m`` put the working directory first: an ``av.py`` there made every check die on import, and the
    suspects were blamed for crashes they never caused (a review helper's find)."""
    (tmp_path / "av.py").write_text("import os\nos._exit(9)\n")
    monkeypatch.chdir(tmp_path)
    assert check_videos([make_clip("guard_cwd.mp4", duration_s=1.0, source_id=9)], device="cpu", mode="auto",
                        fps=1.0, size=64) == {}


def test_the_check_decodes_with_the_scans_decoder(tmp_path: Path, make_clip,  # type: ignore[no-untyped-def]
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A file that crashes FFmpeg's NVDEC decoder (``--decoder ffmpeg``) may pass DALI's: checked with the
    default decoder, it was scanned again and crashed again, run after run (a review helper's find). Here a
    hook makes any decoding for the FFmpeg client die, as that decoder would on this file."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, signal\n"
        "import quadvault_dali.sampling._cpu as _cpu\n"
        "_decode = _cpu.CpuSampler.decode_video\n"
        "def decode_video(self, *a, **k):\n"
        "    if self.config.decode_client == 'ffmpeg':\n"
        "        os.kill(os.getpid(), signal.SIGSEGV)\n"
        "    return _decode(self, *a, **k)\n"
        "_cpu.CpuSampler.decode_video = decode_video\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    clip = make_clip("guard_client.mp4", duration_s=1.0, source_id=10)
    assert check_in_child(clip, device="cpu", mode="auto", fps=1.0, size=64) is None
    why = check_in_child(clip, device="cpu", mode="auto", fps=1.0, size=64, decode_client="ffmpeg")
    assert why is not None and "SIGSEGV" in why


@pytest.mark.parametrize("case", ["SIGTERM", "SIGKILL once", "SIGKILL always"])
def test_a_stopped_or_killed_check_is_no_verdict_on_its_video(tmp_path: Path, make_clip,  # type: ignore[no-untyped-def]
                                                              monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    """A SIGTERM to the check (a user or a batch system stopping the work) marked the video it was on as a decoder
    crasher, for good (an interrupting tester's find); a SIGKILL may be the out-of-memory killer's choice of the
    biggest process: checked once more before it counts."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(CRASH_HOOK)
    monkeypatch.setenv("QV_TEST_CRASH_ON", "guard_s1.mp4")
    monkeypatch.setenv("QV_TEST_SIGNAL", case.split()[0])
    if case == "SIGKILL once":
        monkeypatch.setenv("QV_TEST_ONCE", str(tmp_path / "killed"))
    monkeypatch.setenv("QV_TEST_STARTS", str(tmp_path / "starts.log"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    clips = [make_clip(f"guard_s{i}.mp4", duration_s=1.0, source_id=i) for i in range(3)]
    verdicts = check_videos(clips, device="cpu", mode="auto", fps=1.0, size=64)
    if case == "SIGKILL always":
        assert set(verdicts) == {clips[1]} and "killed on this file twice (SIGKILL" in verdicts[clips[1]]
    else:
        assert verdicts == {}
