"""atomic_path: the real name holds the old content or the complete new one, never a partial file."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from quadvault_dali._files import atomic_path


def test_complete_write_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "shard.parquet"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"new")
        assert target.read_bytes() == b"old"  # not visible until the block ends
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["shard.parquet"]


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "shard.parquet"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["shard.parquet"]


def test_fsync_flushes_the_content_then_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A power cut after a shard is trusted must not lose it: the file, then its folder entry, reach disk."""
    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync
    target = tmp_path / "part-00001.parquet"

    def record(fd: int) -> None:
        synced.append((os.readlink(f"/proc/self/fd/{fd}"), stat.S_ISDIR(os.fstat(fd).st_mode)))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", record)
    with atomic_path(target, fsync=True) as tmp:
        tmp.write_bytes(b"rows")
        tmp_name = str(tmp)
    assert synced == [(tmp_name, False), (str(tmp_path), True)]
    synced.clear()
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"rows")
    assert synced == []


def test_a_dead_process_nobody_waited_for_is_gone(tmp_path: Path) -> None:
    """A killed reel's process lingered as a zombie in a container whose shell reaps nothing, and its temporaries
    were kept as a live run's. Only the temporaries of the names asked for are removed (a reel's folder is the
    user's)."""
    import subprocess
    import sys
    import time

    from quadvault_dali._files import process_gone, remove_dead_temporaries

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # exited, not yet waited for: a zombie
        with open(f"/proc/{child.pid}/stat", "rb") as fh:
            if fh.read().rsplit(b")", 1)[-1].split()[0] == b"Z":
                break
        time.sleep(0.05)
    assert process_gone(child.pid)
    assert not process_gone(os.getpid())
    mine = tmp_path / f".reel.mp4.clips.csv.{child.pid}-1.tmp"
    other = tmp_path / f".notes.txt.{child.pid}-1.tmp"
    live = tmp_path / f".reel.mp4.clips.csv.{os.getpid()}-1.tmp"
    for f in (mine, other, live):
        f.write_text("x")
    remove_dead_temporaries(tmp_path, prefix="reel.mp4")
    assert not mine.exists() and other.exists() and live.exists()
    child.wait()


def test_a_long_but_legal_name_gets_a_temporary_name_the_file_system_takes(tmp_path: Path) -> None:
    """``.NAME.PID-THREAD.tmp`` added 27 bytes: a 230-byte reel name's clip list failed with "File name too long"
    after its encode (an odd-paths review's find). Long names are cut, a hash keeps two of them apart."""
    from quadvault_dali._files import NAME_MAX, temp_name

    first, second = "é" * 115 + "a.mp4.clips.csv", "é" * 115 + "b.mp4.clips.csv"  # 245 bytes each
    assert len(os.fsencode(first)) <= NAME_MAX
    names = {temp_name(first), temp_name(second)}
    assert len(names) == 2 and all(len(os.fsencode(n)) <= NAME_MAX for n in names)
    with atomic_path(tmp_path / first) as tmp:
        tmp.write_text("done")
    assert (tmp_path / first).read_text() == "done" and temp_name("short.csv").startswith(".short.csv.")


def test_a_killed_runs_shortened_temporary_is_swept_as_its_name_asks(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A temporary whose NAME ``temp_name`` cut short (a reel named near ``NAME_MAX`` bytes) did not start with the
    reel's name, so a rerun after ``kill -9`` kept it forever; one of another long name is kept, also one alike in
    all the part kept (~217 bytes) when the prefix names the whole NAME: its hash tells them apart (a review's
    find: a reel took another's killed list as its own and replaced a user's video)."""
    import subprocess
    import sys

    from quadvault_dali._files import dead_temporaries, temp_name

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    monkeypatch.setattr(os, "getpid", lambda: child.pid)  # named as the killed run named them (its PID's length)
    reel = "é" * 110 + "flight.mp4"  # 230 bytes: its clip list's temporary is cut
    other = "other " + "é" * 110 + ".mp4"
    theirs = {}
    for name in (f"{reel}.clips.csv", f"{other}.clips.csv", "short.mp4.clips.csv"):
        short = temp_name(name)
        theirs[name] = tmp_path / short
        theirs[name].write_text("x")
    assert "~" in theirs[f"{reel}.clips.csv"].name  # cut, with its hash
    assert dead_temporaries(tmp_path, f"{reel}.clips.csv.") == [theirs[f"{reel}.clips.csv"]]
    assert dead_temporaries(tmp_path, "short.mp4") == [theirs["short.mp4.clips.csv"]]
    assert len(dead_temporaries(tmp_path)) == 3
    twin = "é" * 110 + "flight.mp5"  # its first 229 bytes are the reel's: cut, they are the same
    short = temp_name(f"{twin}.clips.csv")
    (tmp_path / short).write_text("x")
    assert short.split("~")[0] == theirs[f"{reel}.clips.csv"].name.split("~")[0]
    assert dead_temporaries(tmp_path, f"{reel}.clips.csv.") == [theirs[f"{reel}.clips.csv"]]
    assert dead_temporaries(tmp_path, f"{twin}.clips.csv.") == [tmp_path / short]
