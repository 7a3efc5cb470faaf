"""The scan's supervisor (``scan.supervise``): what counts as this job's progress, and how a restart is run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from quadvault_dali.scan import supervise
from quadvault_dali.scan.supervise import ScanSupervisor, own_shards


def _shard(out: Path, name: str) -> None:
    for table in ("videos", "seconds"):
        (out / table).mkdir(parents=True, exist_ok=True)
        (out / table / name).write_bytes(b"PAR1")


def test_only_this_jobs_complete_shards_are_its_progress(tmp_path: Path) -> None:
    """A --shard job array writes into one folder: a sibling's shards are not this job's progress (a helper saw
    part 0/2 crash-loop for as long as part 1/2 kept writing)."""
    _shard(tmp_path, "part-00000.parquet")
    _shard(tmp_path, "part-g1-00000.parquet")  # this job's GPU worker
    _shard(tmp_path, "part-s01of02-00000.parquet")  # a sibling job's
    (tmp_path / "videos" / "part-00001.parquet").write_bytes(b"PAR1")  # no seconds partner: incomplete
    assert {n for n, _, _ in own_shards(tmp_path, "")} == {"part-00000.parquet", "part-g1-00000.parquet"}
    assert {n for n, _, _ in own_shards(tmp_path, "s01of02")} == {"part-s01of02-00000.parquet"}
    assert {n for n, _, _ in own_shards(tmp_path, "s00of02")} == set()


def test_a_shard_rewritten_under_its_old_name_is_new_progress(tmp_path: Path) -> None:
    """``--no-resume`` removes the old shards and numbers its own from 0 again."""
    _shard(tmp_path, "part-00000.parquet")
    before = own_shards(tmp_path, "")
    (tmp_path / "videos" / "part-00000.parquet").unlink()
    (tmp_path / "videos" / "part-00000.parquet").write_bytes(b"PAR1 again")
    os.utime(tmp_path / "videos" / "part-00000.parquet", ns=(1, 1))
    assert own_shards(tmp_path, "") - before


def test_a_restart_resumes_only_once_a_run_has_written_a_shard(tmp_path: Path) -> None:
    """A child that died before it wrote anything (loading its model, say) has not yet removed what --no-resume
    replaces: the restart must still start over, and still retry errors."""
    argv = ["-q", "scan", "lib", "-m", "model", "-o", "out", "--no-resume", "--retry-errors"]
    sup = ScanSupervisor(argv, tmp_path, restarts=3)
    assert sup._command()[-len(argv):] == argv
    sup._written = {"/lib/a.mp4"}  # a run wrote a row
    assert sup._command()[-len(argv) + 1:] == ["-q", "scan", "lib", "-m", "model", "-o", "out", "--resume"]


def test_the_child_runs_this_interpreter_with_its_flags_and_import_path(tmp_path: Path) -> None:
    """``python -m`` would put the working directory first: a ``click.py`` there broke the child (a helper's
    find), and ``-X faulthandler`` was lost for the very crash being restarted."""
    (tmp_path / "click.py").write_text("raise SystemExit('the wrong click')\n")
    command = ScanSupervisor(["--version"], tmp_path, restarts=1)._command()
    assert command[0] == sys.executable and "-c" in command
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and "quadvault" in run.stdout, run.stderr


def test_a_stop_between_a_death_and_the_next_start_ends_the_command(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sup = ScanSupervisor(["scan"], tmp_path, restarts=3)
    sup.stopped_by = signal.SIGTERM
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: pytest.fail("started a child"))
    assert sup._loop() == 128 + signal.SIGTERM


def _rows(out: Path, name: str, paths: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for table in ("videos", "seconds"):
        (out / table).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"path": paths}), out / table / name)


def test_rows_rewritten_at_every_start_are_no_progress(tmp_path: Path) -> None:
    """A retried error row (an unreadable file) is dropped and written again in a new shard by every run: counted
    as progress, a crash loop never ended (a helper saw 26 restarts in 90 s with --restarts 2)."""
    sup = ScanSupervisor(["scan"], tmp_path, restarts=2)
    before = own_shards(tmp_path, "")
    _rows(tmp_path, "part-00000.parquet", ["/lib/unreadable.mp4", "/lib/a.mp4"])
    assert sup.progressed(before)
    before = own_shards(tmp_path, "")
    (tmp_path / "videos" / "part-00000.parquet").unlink()
    _rows(tmp_path, "part-00001.parquet", ["/lib/unreadable.mp4"])  # the same error row, once more
    assert not sup.progressed(before)
    before = own_shards(tmp_path, "")
    _rows(tmp_path, "part-00002.parquet", ["/lib/unreadable.mp4", "/lib/b.mp4"])
    assert sup.progressed(before)


def test_an_orphaned_child_exits_instead_of_working_on() -> None:
    """A child whose parent died before it asked for the death signal (a --gpus worker importing torch while the
    scan was killed) would never get it: it sees the parent is gone and exits."""
    code = "from quadvault_dali._lifetime import die_with_parent; die_with_parent(1); print('still here')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and "still here" not in run.stdout
    code = f"from quadvault_dali._lifetime import die_with_parent; die_with_parent({os.getpid()}); print('still here')"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and "still here" in run.stdout


def test_the_hang_clock_stands_still_while_the_process_is_stopped() -> None:
    """Ctrl-Z, then ``fg`` later: the time stopped must not count towards "no frame for N s" (a healthy video in a
    suspects' check was blamed for a hang after a helper's Ctrl-Z)."""
    import time

    code = ("import sys, time; from quadvault_dali._clock import awake; a, m = awake(), time.monotonic(); "
            "print('ready', flush=True); sys.stdin.readline(); print(awake() - a, time.monotonic() - m, flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdin is not None
    assert proc.stdout.readline().strip() == "ready"
    os.kill(proc.pid, signal.SIGSTOP)
    time.sleep(7.0)
    os.kill(proc.pid, signal.SIGCONT)
    time.sleep(1.0)
    proc.stdin.write("go\n")
    proc.stdin.flush()
    awake_s, wall_s = map(float, proc.stdout.readline().split())
    proc.wait(timeout=30)
    assert wall_s > 7.5 and awake_s < wall_s - 5.0, (awake_s, wall_s)


def test_a_restart_after_a_crash_that_saved_nothing_closes_shards_sooner(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Only complete shards survive a death: a run that finished videos but died before it closed a shard lost
    them, and the next would too. The interval goes down (half, or a third of the crashed run's life), never up,
    and only then: a crash while starting up, or after shards were closed, must not pin tiny shards on the rest of
    the night. The child learns it from its environment, not from a rewritten command line."""
    assert supervise.shard_seconds_after_crash(60.0, 21.0) == 7.0
    assert supervise.shard_seconds_after_crash(60.0, 600.0) == 30.0  # halved even when start-up took most of it
    assert supervise.shard_seconds_after_crash(60.0, 3.0) == supervise.MIN_SHARD_SECONDS
    assert supervise.shard_seconds_after_crash(3.0, 600.0) == 3.0  # never above what was asked
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice: thread_environment adds nothing
    argv = ["-q", "scan", "lib", "-o", "--", "--shard-seconds", "60"]
    sup = ScanSupervisor(argv, tmp_path, restarts=3, shard_seconds=60.0)
    sup._lost_work = False
    sup.after_crash(21.0, progressed=False)  # nothing had finished: the interval is not why it saved nothing
    assert sup.shard_seconds == 60.0 and sup.child_env() == {}
    sup._lost_work = True
    sup.after_crash(21.0, progressed=True)  # it closed shards
    assert sup.shard_seconds == 60.0
    sup.after_crash(21.0, progressed=False)
    assert sup.shard_seconds == 7.0 and sup.child_env() == {supervise.SHARD_SECONDS_ENV: "7"}
    assert sup._command()[-len(argv):] == argv  # the command line is left as it was


def test_scan_children_run_openmp_workers_that_sleep_unless_the_user_chose(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch's OpenMP workers spin between parallel regions by default, on the cores a CPU scan's decoding threads
    need; the scan's child is started with OMP_WAIT_POLICY=PASSIVE, and a policy the user exported is kept."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    sup = ScanSupervisor(["scan", "lib"], Path("out"), restarts=1)
    assert sup.child_env() == {"OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert sup.child_env() == {}


def test_the_videos_a_dead_run_finished_are_read_from_its_journals(tmp_path: Path) -> None:
    from quadvault_dali.scan.crashguard import finished_in_journals

    from quadvault_dali.scan.crashguard import CrashJournal

    for tag, started, finished in (("", ["a", "b"], ["a"]), ("g1", ["c"], ["c"]), ("s00of02", ["x"], ["x"])):
        journal = CrashJournal(tmp_path, tag)
        for name in started:
            journal.started(Path(f"/lib/{name}.mp4"))
        for name in finished:
            journal.finished(Path(f"/lib/{name}.mp4"))
        journal._fh.close()
    assert finished_in_journals(tmp_path, "") == {"/lib/a.mp4", "/lib/c.mp4"}


def test_a_ctrl_c_while_the_child_still_imports_ends_it_quietly() -> None:
    """The child's first statement takes a terminal's Ctrl-C that comes before the command's own handler (while
    torch and the CLI import): status 130, no KeyboardInterrupt traceback. A SIGINT the shell ignores (a background
    job's) stays ignored."""
    from quadvault_dali._supervisor import QUIET_EARLY_SIGINT

    importing = f"{QUIET_EARLY_SIGINT}; import os, signal, time; os.kill(os.getpid(), signal.SIGINT); time.sleep(2)"
    run = subprocess.run([sys.executable, "-c", importing], capture_output=True, text=True, timeout=60)
    assert run.returncode == 130 and run.stderr == ""
    ignored = subprocess.run([sys.executable, "-c", importing + "; print('went on')"], capture_output=True, text=True,
                             timeout=60, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert ignored.returncode == 0 and ignored.stdout.strip() == "went on", ignored.stderr
    bare = subprocess.run([sys.executable, "-c", importing.split("; ", 2)[-1]], capture_output=True, text=True,
                          timeout=60)
    assert bare.returncode != 130 and "KeyboardInterrupt" in bare.stderr  # what the first statement prevents
