"""A failing disk (EIO past some offset of one file) while the gpu backend's cutter reads a video: an error
that says so, or, where the lost bytes were not needed, exactly what an undamaged read gives. Never a shorter
"ok" result: FFmpeg's own file reader turns EIO inside Matroska, WebM and MPEG-TS demuxing into the end of the
file, and inside a packet into the packet cut short (stop 17's reviews).

The fault comes from a tiny LD_PRELOAD library compiled here (Linux with a C compiler; skipped elsewhere) that
fails read()/pread() on the named file past the given offset; each case runs ``_prepare_pool.cut_one`` (what a
prepare thread or worker runs) in a child process under it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or shutil.which("cc") is None,
                                reason="needs Linux and a C compiler for the fault-injecting library")

FAULT_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int failing(int fd, off_t end) {
    const char *name = getenv("QV_FAIL_PATH");
    if (name == NULL) return 0;
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = 0;
    return strcmp(target, name) == 0 && end > atoll(getenv("QV_FAIL_AT"));
}

ssize_t read(int fd, void *buf, size_t n) {
    static ssize_t (*real)(int, void *, size_t);
    if (real == NULL) real = dlsym(RTLD_NEXT, "read");
    off_t at = lseek(fd, 0, SEEK_CUR);
    if (at >= 0 && failing(fd, at + (off_t)n)) { errno = EIO; return -1; }
    return real(fd, buf, n);
}

ssize_t pread64(int fd, void *buf, size_t n, off_t at) {
    static ssize_t (*real)(int, void *, size_t, off_t);
    if (real == NULL) real = dlsym(RTLD_NEXT, "pread64");
    if (failing(fd, at + (off_t)n)) { errno = EIO; return -1; }
    return real(fd, buf, n, at);
}

ssize_t pread(int fd, void *buf, size_t n, off_t at) { return pread64(fd, buf, n, at); }
"""

CUT = r"""
import hashlib, json, sys
from pathlib import Path
from quadvault_dali.sampling._prepare_pool import CutSettings, cut_one
from quadvault_dali.sampling._remux import CLIP_PIXELS

class Conn:
    sent = []
    def send(self, message): self.sent.append(message)
    def recv(self): return ("cut", None)
    def poll(self): return False

conn = Conn()
cut_one(conn, Path(sys.argv[1]), CutSettings(float(sys.argv[3]), sys.argv[2], False, CLIP_PIXELS))
digest, frames, errors = hashlib.sha1(), 0, []
for message in conn.sent:
    if message[0] == "clip":
        frames += len(message[1])
        for run in message[1].runs:
            for packet in run.packets:
                digest.update(packet.data)
    elif message[0] in ("error", "cut_error"):
        errors.append(str(message[-1]))
print(json.dumps({"frames": frames, "digest": digest.hexdigest(), "errors": errors}))
"""


@pytest.fixture(scope="module")
def fault_library(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("eio")
    source = work / "fault.c"
    source.write_text(FAULT_C)
    library = work / "libfault.so"
    built = subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(library), str(source), "-ldl"],
                           capture_output=True, text=True)
    if built.returncode != 0:
        pytest.skip(f"cannot build the fault-injecting library: {built.stderr.strip()[:200]}")
    return library


def _cut(path: Path, mode: str, fps: float, library: Path, fail_at: int | None) -> dict:
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("QV_FAIL")}
    if fail_at is not None:
        env.update(LD_PRELOAD=str(library), QV_FAIL_PATH=str(path.resolve()), QV_FAIL_AT=str(fail_at))
    done = subprocess.run([sys.executable, "-c", CUT, str(path), mode, str(fps)], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name, spec", [
    ("eio_bframes.mp4", {"codec": "h264", "fps": 30, "keyframe_interval_s": 1.0}),
    ("eio_hevc.mp4", {"codec": "hevc", "fps": 25, "keyframe_interval_s": 2.0}),
    ("eio_h264.mkv", {"codec": "h264", "fps": 30, "keyframe_interval_s": 1.0}),
    ("eio_vp9.webm", {"codec": "vp9", "fps": 30, "keyframe_interval_s": 1.0}),
    ("eio_h264.ts", {"codec": "h264", "fps": 25, "keyframe_interval_s": 1.0}),
])
@pytest.mark.parametrize("mode", ["keyframe", "exact"])
def test_a_disk_error_is_an_error_or_changes_nothing(make_clip: Callable[..., Path], fault_library: Path,
                                                     name: str, spec: dict, mode: str) -> None:
    path = make_clip(name, width=320, height=192, duration_s=6.0, **spec)
    whole = _cut(path, mode, 2.0, fault_library, None)
    assert whole["errors"] == [] and whole["frames"] > 0
    _sweep(path, mode, 2.0, fault_library, whole, (0.05, 0.35, 0.65, 0.95))


def test_a_disk_error_in_an_mp4_whose_edit_hides_its_end(make_clip: Callable[..., Path], fault_library: Path,
                                                         tmp_path: Path) -> None:
    """Exact runs of such a file are demuxed by FFmpeg (``PacketIndex.hides_end``): read by path, a fault inside
    the last packet a run needs gave that packet cut short and the video "ok" (review, stop 17)."""
    from _media import remux_video
    from test_trimmed_mp4 import _shorten_edit

    # packets of ~17 kB (4 Mbit/s): many straddle FFmpeg's 32 KiB reads, which is where a fault cuts one short
    source = make_clip("eio_end_source.mp4", codec="h264", width=640, height=360, fps=30, duration_s=8.0,
                       keyframe_interval_s=2.0, bit_rate=4_000_000, x264_preset="ultrafast")
    plain = remux_video(source, tmp_path / "plain.mp4", options={"movflags": "+faststart"})
    path = _shorten_edit(plain, tmp_path / "end_hidden.mp4", 0.07)
    whole = _cut(path, "exact", 2.0, fault_library, None)
    assert whole["errors"] == [] and whole["frames"] > 0
    # faults inside the packets that end runs: each wanted picture's packet and the one after it
    from quadvault_dali.probe import probe_video

    _, index = probe_video(path, with_index=True)
    wanted = [i for i, t in enumerate(index.pts) if abs(t * 2 - round(t * 2)) < 1e-3]
    rows = sorted({r for i in wanted for r in (i, i + 1) if r < len(index.pos)})
    size = path.stat().st_size
    _sweep(path, "exact", 2.0, fault_library, whole,
           tuple((int(index.pos[r]) + int(index.size[r]) // 2) / size for r in rows))


def _sweep(path: Path, mode: str, fps: float, library: Path, whole: dict, shares: tuple[float, ...]) -> None:
    size = path.stat().st_size
    for share in shares:
        faulted = _cut(path, mode, fps, library, int(size * share))
        if faulted["errors"]:
            assert any("Input/output error" in e for e in faulted["errors"]), (share, faulted["errors"])
        else:  # the lost bytes were not needed
            assert (faulted["frames"], faulted["digest"]) == (whole["frames"], whole["digest"]), share
