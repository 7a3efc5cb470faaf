"""The in-flight journal: which videos a dead scan had started, per --shard tag and per GPU worker."""

from __future__ import annotations

from pathlib import Path

from quadvault_dali.scan.crashguard import CrashJournal, check_in_child, journal_path, take_suspects


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
    assert not journal_path(tmp_path, "").exists() and not journal_path(tmp_path, "g1").exists()
    assert take_suspects(tmp_path, "") == []  # each suspect is checked once
    assert sorted(p.name for p in take_suspects(tmp_path, "s00of02")) == ["x.mp4", "y.mp4"]


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
