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
