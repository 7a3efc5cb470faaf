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
    ("reader_vp9.webm", {"codec": "vp9", "fps": 25, "duration_s": 3.0}),
    ("reader_mjpeg.mkv", {"codec": "mjpeg", "fps": 10, "duration_s": 2.0}),
])
def test_a_probe_by_path_costs_what_it_costs_through_a_file_object(make_clip: Callable[..., Path], name: str,
                                                                   spec: dict[str, object]) -> None:
    """FFmpeg's own reads of the file (header, index, what the probe demuxes) and the prober's reads of its
    boxes: within 2 % (FFmpeg's file protocol reads in its own chunks), and never the whole file when the
    counting file read only part of it."""
    path = make_clip(name, width=160, height=96, **spec)
    with CountingFile(path) as fh:
        reads = ThreadReads.start()
        with open_container(path, fh) as container:
            probe_open(container, path)
        through_python = reads.bytes_read()  # FFmpeg's reads through fh and the prober's own opens
    with CuttingSource(path) as source:
        assert source.by_path and source.file is not None
        with source.open() as container:
            info, _ = probe_open(container, path)
        by_path = source.bytes_read()
    assert info.frame_count > 0
    assert abs(by_path - through_python) <= max(2048, 0.02 * through_python)


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
