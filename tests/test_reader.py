"""What a video costs in bytes when FFmpeg reads it by path (``ThreadReads``, ``CuttingSource``): the same bytes
a Python file object would have fetched for it, whatever else the process reads on other threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable

import pytest

from quadvault_dali.probe import open_container, probe_open
from quadvault_dali.sampling._reader import CountingFile, CuttingSource, ThreadReads

from _media import remux_video

pytestmark = pytest.mark.skipif(ThreadReads.start() is None, reason="no per-thread I/O accounting (Linux only)")


def test_counts_this_threads_reads_of_any_file_and_nothing_paused(tmp_path: Path) -> None:
    data = tmp_path / "data.bin"
    data.write_bytes(os.urandom(300_000))
    reads = ThreadReads.start()
    assert reads is not None and reads.bytes_read() == 0
    with open(data, "rb", buffering=0) as fh:
        fh.read(123_456)
        assert reads.bytes_read() == 123_456
        other = threading.Thread(target=lambda: data.read_bytes())  # another thread's reads are its own
        other.start()
        other.join()
        assert reads.bytes_read() == 123_456
        rfd, wfd = os.pipe()
        os.write(wfd, b"x" * 5000)
        with reads.paused():
            assert len(os.read(rfd, 5000)) == 5000
        os.close(rfd), os.close(wfd)
        fh.read(1000)
    assert reads.bytes_read() == 124_456


@pytest.mark.parametrize("name, spec", [
    ("reader_h264.mp4", {"codec": "h264", "fps": 30, "duration_s": 3.0}),
    ("reader_hevc.mp4", {"codec": "hevc", "fps": 25, "duration_s": 3.0}),
    ("reader_h264_audio.mov", {"codec": "h264", "fps": 24, "duration_s": 2.0, "audio": True}),
])
def test_a_probe_by_path_costs_what_it_costs_through_a_file_object(make_clip: Callable[..., Path], name: str,
                                                                   spec: dict[str, object]) -> None:
    """A plain MP4/MOV: FFmpeg's own reads of the file (header, first pictures) and the prober's reads of its
    boxes, within 2 % or 2 KiB (FFmpeg's file protocol reads in its own chunks)."""
    path = make_clip(name, width=160, height=96, **spec)
    for quick in (True, False):
        with CountingFile(path) as fh:
            reads = ThreadReads.start()
            with open_container(path, fh, quick=quick) as container:
                probe_open(container, path)
            through_python = reads.bytes_read()  # FFmpeg's reads through fh and the prober's own opens
        with CuttingSource(path, quick=quick) as source:
            with source.open() as container:
                info, _ = probe_open(container, path)
            assert source.by_path
            by_path = source.bytes_read()
        assert info.frame_count > 0
        assert abs(by_path - through_python) <= max(2048, 0.02 * through_python), quick


def test_a_source_without_thread_accounting_counts_through_its_file(make_clip: Callable[..., Path],
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import quadvault_dali.sampling._reader as reader

    path = make_clip("reader_fallback.mp4", codec="h264", width=160, height=96, fps=30, duration_s=2.0)
    monkeypatch.setattr(reader, "_THREAD_IO", "/nonexistent/io")
    with CuttingSource(path) as source:
        assert not source.by_path
        with source.open() as container:
            probe_open(container, path)
        assert source.file is not None and source.bytes_read() == source.file.bytes_read > 0


def test_ffmpegs_own_disk_errors_read_like_pythons(make_clip: Callable[..., Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Read by path, a failing disk reaches us as FFmpeg's AVERROR(EIO): PyAV's ``av.error.OSError`` with errno
    5. Opening or cutting, it becomes the same error row as a Python read's EIO, with the disk hint."""
    import errno

    import av

    import quadvault_dali.probe as probe
    from quadvault_dali.errors import FileAccessError, unexpected_failure

    path = make_clip("reader_eio.mp4", codec="h264", width=160, height=96, fps=30, duration_s=1.0)
    try:
        av.error.err_check(-errno.EIO, str(path))
    except av.error.OSError as raised:
        eio = raised
    cut = unexpected_failure(eio, "preparing for GPU decoding", path)
    assert isinstance(cut, FileAccessError) and "Input/output error" in str(cut) and "disk" in str(cut)

    def failing_open(source: object, **kw: object) -> None:
        raise eio

    monkeypatch.setattr(probe, "_av_open", failing_open)
    with pytest.raises(FileAccessError, match="Input/output error.*disk or the file may be damaged"):
        open_container(path)


def test_only_plain_mp4s_are_read_by_path(make_clip: Callable[..., Path], tmp_path: Path) -> None:
    """FFmpeg's file reader ends Matroska/WebM/MPEG-TS demuxing quietly at a disk error (a short "ok" video);
    those, and fragmented MP4s (demuxed as they go), keep reading through the Python file, which raises."""
    plain = make_clip("reader_plain.mp4", codec="h264", width=160, height=96, fps=30, duration_s=2.0)
    others = [make_clip("reader_other.mkv", codec="h264", width=160, height=96, fps=30, duration_s=2.0),
              make_clip("reader_other.webm", codec="vp9", width=160, height=96, fps=30, duration_s=2.0),
              make_clip("reader_other.ts", codec="h264", width=160, height=96, fps=30, duration_s=2.0),
              remux_video(plain, tmp_path / "fragmented.mp4", options={"movflags": "frag_keyframe+empty_moov"})]
    for path, by_path in [(plain, True)] + [(p, False) for p in others]:
        with CuttingSource(path) as source:
            with source.open() as container:
                info, _ = probe_open(container, path)
            assert source.by_path is by_path, path.name
            assert info.frame_count > 0 and source.bytes_read() > 0
            if not by_path:
                assert source.bytes_read() == source.file.bytes_read  # as before: what the file object fetched


def test_a_plain_mp4_that_will_not_open_by_path_is_opened_through_the_file(make_clip: Callable[..., Path],
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk error while FFmpeg reads the header by path reads as a damaged ``moov``; through the file the
    ``OSError`` itself comes back, and that error is the one reported."""
    import errno

    import av

    import quadvault_dali.probe as probe
    from quadvault_dali.errors import FileAccessError

    path = make_clip("reader_reopen.mp4", codec="h264", width=160, height=96, fps=30, duration_s=1.0)
    real_open = probe._av_open
    opened: list[str] = []

    def by_path_fails(source: object, **kw: object) -> object:
        opened.append(type(source).__name__)
        if isinstance(source, str):
            raise av.error.InvalidDataError(errno.EINVAL, "Invalid data found when processing input")
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(probe, "_av_open", by_path_fails)
    with CuttingSource(path, quick=False) as source:
        with pytest.raises(FileAccessError, match="Input/output error.*disk or the file may be damaged"):
            source.open()
        assert opened == ["str", "CountingFile"] and not source.by_path
    with CuttingSource(path) as source:  # each way quickly first, then in full (``QUICK_PROBE_OPTIONS``)
        opened.clear()
        with pytest.raises(FileAccessError, match="Input/output error.*disk or the file may be damaged"):
            source.open()
        assert opened == ["str", "str", "CountingFile", "CountingFile"] and not source.by_path
    monkeypatch.setattr(probe, "_av_open", real_open)


def test_paused_does_not_nest() -> None:
    reads = ThreadReads.start()
    assert reads is not None
    with reads.paused():
        with pytest.raises(RuntimeError):
            with reads.paused():
                pass
        with pytest.raises(RuntimeError):
            reads.bytes_read()
    assert reads.bytes_read() == 0
