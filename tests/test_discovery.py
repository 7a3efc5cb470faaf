"""Discovery: recursive, case-insensitive, hidden/system folders skipped, symlink loops ended."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from quadvault_dali.discovery import find_videos


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_finds_videos_sorted_and_skips_hidden(tmp_path: Path) -> None:
    expected = [_touch(tmp_path / "2024" / "b.MP4"), _touch(tmp_path / "2024" / "sub" / "a.mov"),
                _touch(tmp_path / "c.MTS"), _touch(tmp_path / "d.webm")]
    _touch(tmp_path / "notes.txt")
    _touch(tmp_path / ".hidden" / "x.mp4")
    _touch(tmp_path / "$RECYCLE.BIN" / "y.mp4")
    _touch(tmp_path / "2024" / "._b.MP4")  # macOS resource fork
    assert find_videos([tmp_path]) == sorted(expected, key=str)


def test_symlink_loops_and_duplicates(tmp_path: Path) -> None:
    clip = _touch(tmp_path / "lib" / "a.mp4")
    os.symlink(tmp_path / "lib", tmp_path / "lib" / "loop")
    os.symlink(clip, tmp_path / "lib" / "alias.mp4")
    found = find_videos([tmp_path / "lib", clip])
    assert found == [tmp_path / "lib" / "a.mp4"]


def test_a_file_met_through_links_first_keeps_its_own_path(tmp_path: Path) -> None:
    """Links that sort before the file ('a_link.mp4' < 'sub/') met it first, so its path changed whenever a
    link was added: a resumed scan then recorded the same video twice."""
    clip = _touch(tmp_path / "lib" / "sub" / "clip.MP4")
    os.symlink("sub/clip.MP4", tmp_path / "lib" / "b_link.mp4")
    assert find_videos([tmp_path / "lib"]) == [clip]
    os.symlink("sub/clip.MP4", tmp_path / "lib" / "a_link.mp4")
    os.symlink("sub", tmp_path / "lib" / "a_folder_link")
    assert find_videos([tmp_path / "lib"]) == [clip]
    outside = _touch(tmp_path / "elsewhere" / "x.mp4")
    os.symlink(outside, tmp_path / "lib" / "x_link.mp4")  # only a link reaches it: the link it is
    assert find_videos([tmp_path / "lib"]) == [clip, tmp_path / "lib" / "x_link.mp4"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder")
def test_unreadable_folder_is_reported_not_fatal(tmp_path: Path) -> None:
    _touch(tmp_path / "ok" / "a.mp4")
    locked = tmp_path / "locked"
    _touch(locked / "b.mp4")
    locked.chmod(0)
    errors: list[Path] = []
    try:
        assert find_videos([tmp_path], on_error=lambda p, e: errors.append(p)) == [tmp_path / "ok" / "a.mp4"]
    finally:
        locked.chmod(0o755)
    assert errors == [locked]


def test_missing_root_is_reported(tmp_path: Path) -> None:
    errors: list[Path] = []
    assert find_videos([tmp_path / "gone"], on_error=lambda p, e: errors.append(p)) == []
    assert errors == [tmp_path / "gone"]


def test_camera_proxies_are_skipped_beside_their_originals(tmp_path: Path) -> None:
    """GoPro .LRV and DJI .LRF proxies duplicate their recordings; alone (original deleted) they are kept."""
    originals = [_touch(tmp_path / "gopro" / "GX010042.MP4"), _touch(tmp_path / "gopro" / "GH010043.MP4"),
                 _touch(tmp_path / "gopro" / "GOPR0044.MP4"), _touch(tmp_path / "dji" / "DJI_0001.MP4"),
                 _touch(tmp_path / "dji" / "DJI_20240501_0002_D.MOV")]
    twins = [_touch(tmp_path / "gopro" / "GL010042.LRV"), _touch(tmp_path / "gopro" / "GL010043.LRV"),
             _touch(tmp_path / "gopro" / "GOPR0044.LRV"), _touch(tmp_path / "dji" / "DJI_0001.LRF"),
             _touch(tmp_path / "dji" / "dji_20240501_0002_d.lrf")]
    alone = [_touch(tmp_path / "gopro" / "GL010099.LRV"), _touch(tmp_path / "dji" / "DJI_0003.LRF"),
             _touch(tmp_path / "elsewhere" / "DJI_0001.LRF")]  # its original is in another folder
    found = find_videos([tmp_path])
    assert found == sorted(originals + alone, key=str)
    assert not set(twins) & set(found)
    assert find_videos([twins[0]]) == [twins[0]]  # a file named explicitly is always taken


def test_reels_this_tool_made_are_not_footage(tmp_path: Path) -> None:
    """A reel saved into the library (its clip list beside it) would top the next scan: it is skipped."""
    from quadvault_dali.reel import sidecar_path

    footage = [_touch(tmp_path / "2024" / "DJI_0001.MP4"), _touch(tmp_path / "2024" / "best.mov"),
               _touch(tmp_path / "2024" / "Best of 2024.mov")]  # the user's own edit beside the reel: footage
    reel = _touch(tmp_path / "2024" / "Best of 2024.mp4")
    _touch(sidecar_path(reel))
    assert sidecar_path(reel).name == "Best of 2024.mp4.clips.csv"
    assert find_videos([tmp_path]) == sorted(footage, key=str)
    # a list from before 2026-11-27 (named by stem) still marks its reel; a video of another stem stays footage
    legacy = _touch(tmp_path / "old" / "trip.mp4")
    _touch(tmp_path / "old" / "trip.clips.csv")
    own = _touch(tmp_path / "old" / "trip2.mov")
    assert legacy not in find_videos([tmp_path]) and own in find_videos([tmp_path])
    assert find_videos([reel]) == [reel]  # named explicitly: taken


def test_a_linked_folder_whose_target_is_gone_is_reported(tmp_path: Path) -> None:
    """An unplugged USB disk linked into the library: said, so a scan does not take its videos for deleted."""
    from quadvault_dali.discovery import find_videos

    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "usb").symlink_to(tmp_path / "unplugged")
    (tmp_path / "gone.mp4").symlink_to(tmp_path / "nowhere.mp4")  # a linked video whose target is gone
    reported: list[tuple[Path, OSError]] = []
    found = find_videos([tmp_path], on_error=lambda p, e: reported.append((p, e)))
    assert found == [tmp_path / "a.mp4"]
    assert sorted((p.name, e.errno) for p, e in reported) == [("gone.mp4", 2), ("usb", 2)]


def test_a_library_deeper_than_pythons_recursion_limit_is_walked(tmp_path: Path) -> None:
    """The walk recursed once per folder level: about 980 levels (a 2-KB path) ended the scan with a
    RecursionError. The order and the link rules are those of the recursive walk."""
    import sys

    depth = sys.getrecursionlimit() + 100
    deep = tmp_path
    for _ in range(depth):  # one level at a time (Path.mkdir(parents=True) recurses too)
        deep = deep / "d"
        deep.mkdir()
    expected = [_touch(tmp_path / "a.mp4"), _touch(deep / "bottom.mp4"), _touch(tmp_path / "d" / "e.mp4")]
    try:
        assert find_videos([tmp_path]) == sorted(expected, key=str)
    finally:  # bottom up: shutil.rmtree (pytest's clean-up of old runs) recurses as deep as the tree
        (deep / "bottom.mp4").unlink()
        while deep != tmp_path / "d":
            deep.rmdir()
            deep = deep.parent


def test_folders_that_cannot_be_entered_or_named_are_reported_and_the_scan_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder that can be listed but not entered (``chmod -R 644``), and one whose path is past Linux's 4,096
    bytes: reporting them stat'ed them again, which raised, and the whole scan stopped."""
    import pathlib

    from quadvault_dali.scan.runner import select_files

    good = _touch(tmp_path / "lib" / "good.mp4")
    noexec = _touch(tmp_path / "lib" / "noexec" / "clip.mp4")
    fd = os.open(tmp_path / "lib", os.O_RDONLY)
    try:  # 20 folders of 250 bytes, made relative to their parents (their paths are too long to name)
        for _ in range(20):
            os.mkdir("x" * 250, dir_fd=fd)
            fd, parent = os.open("x" * 250, os.O_RDONLY, dir_fd=fd), fd
            os.close(parent)
        os.close(os.open("deep.mp4", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    finally:
        os.close(fd)
    real_stat = pathlib.Path.stat

    def no_entry(self: pathlib.Path, *args: object, **kw: object) -> os.stat_result:
        if self == noexec:
            raise PermissionError(13, "Permission denied", str(self))
        return real_stat(self, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pathlib.Path, "stat", no_entry)
    unreadable: list[Path] = []
    files = select_files([tmp_path / "lib"], unreadable=unreadable)
    assert [f.path for f in files] == [good]
    assert noexec in unreadable and len(unreadable) == 2
    assert len(str(unreadable[-1] if unreadable[0] == noexec else unreadable[0])) > 4096
