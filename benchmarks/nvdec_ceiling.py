"""How many keyframes per second NVDEC itself decodes on this machine, without DALI: the ceiling for #2.

The gpu backend's 1080p keyframe sampling stops near 2,000 frames/s on an H100 with NVDEC 40-55 % busy, and
the host prepares clips at ~3,000 frames/s (``prep_bench``). What is left is DALI's decoder, which decodes a
sample's frames one after another with a stream sync after each and sets up per sample. This benchmark asks
the same hardware through another client: FFmpeg's ``h264_cuvid``/``hevc_cuvid`` decoders in the PyAV the
project already ships, fed the clips' keyframes back to back from several threads (PyAV releases the GIL
while FFmpeg decodes). Frames come back in host memory, so each row pays the download too; with
``resize`` NVDEC's own scaler shrinks them first (the size the model wants), so the download is small.

Rows per clip and thread count:
* ``stream``: one decoder per thread, every keyframe of every copy fed to it (no set-up per video);
* ``per-video``: a new decoder for each video, as DALI sets one up per sample (the set-up's cost).

If ``stream`` rows reach well past the gpu backend's sampling rows on the same clips, DALI is the limit and
another decode client would lift it; if they stop near them, NVDEC is. Not the product's path: a diagnostic.

``--clients`` adds rows for FFmpeg's own decoders with NVDEC as a hwaccel, the FFmpeg client's path
(``sampling/_ffmpeg_decoder.py``, ``NVDEC_PATH`` hwaccel): ``hwaccel`` in the CUDA primary context PyTorch
uses (as the client runs: PyTorch starts it first), ``hwaccel-own`` with a context FFmpeg creates per decoder.
Pictures stay on the GPU (no download, no conversion), full size (no scaler on that path). On the H100 the
client sampled 1,553 frames/s with 8 decode threads (stop 21) while ``h264_cuvid`` here reached 3,491: these
rows say whether the hwaccel path itself, or sharing one context, is where the difference goes.

    python benchmarks/nvdec_ceiling.py CLIP.mp4 [CLIP2.mp4 ...] --out ceiling.json
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import av

from _gpu_monitor import UtilisationMonitor
from _results import write_json
from quadvault_dali._nal import length_size_of
from quadvault_dali.sampling._remux import clean_start
from sampling_bench import machine, slug, versions

RESULTS = Path(__file__).resolve().parent / "results"
#: FFmpeg's NVDEC decoders by the codec name PyAV reports for a stream
CUVID = {"h264": "h264_cuvid", "hevc": "hevc_cuvid", "av1": "av1_cuvid", "vp9": "vp9_cuvid"}


@dataclass
class Keyframes:
    """One clip's keyframes, read once, and what a decoder needs to take them."""

    path: Path
    codec: str
    extradata: bytes
    width: int
    height: int
    packets: list[bytes]


def read_keyframes(path: Path) -> Keyframes:
    """The keyframe packets of ``path``'s first video stream, in file order."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        ctx = stream.codec_context
        extradata = bytes(ctx.extradata or b"")
        framing = length_size_of(ctx.name, extradata)
        # HEVC CRAs relabelled BLA, as the product's clips carry them (``_remux.clean_start``): fed on their own,
        # CRAs take picture order counts from pictures that never came and FFmpeg's decoder drops some
        packets = [clean_start(bytes(p), ctx.name, framing) for p in container.demux(stream) if p.size and p.is_keyframe]
        return Keyframes(path, ctx.name, extradata, ctx.width, ctx.height, packets)


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side ``short_side`` and even sides (NV12 wants them even)."""
    scale = short_side / min(width, height)
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


#: the ways this benchmark reaches NVDEC through FFmpeg (``--clients``)
CLIENTS = ("cuvid", "hwaccel", "hwaccel-own")


def open_decoder(clip: Keyframes, resize: tuple[int, int] | None, software: bool = False,
                 client: str = "cuvid") -> Any:
    """FFmpeg's NVDEC decoder for the clip's codec (``software``: its CPU decoder, the same rows as a reference
    and a way to check this script without a GPU; it has no scaler). ``client``: ``cuvid`` (``h264_cuvid``...,
    frames downloaded), ``hwaccel`` (FFmpeg's decoder with NVDEC in the shared primary context, frames left on
    the GPU) or ``hwaccel-own`` (the same in a CUDA context of its own)."""
    if client != "cuvid" and not software:
        return open_hwaccel_decoder(clip, shared=client == "hwaccel")
    name = clip.codec if software else CUVID.get(clip.codec)
    if name is None:
        raise ValueError(f"{clip.path}: no NVDEC decoder in FFmpeg for {clip.codec}")
    if software and resize is not None:
        raise ValueError("FFmpeg's CPU decoders have no scaler: resized rows are NVDEC's")
    ctx = av.CodecContext.create(name, "r")
    ctx.extradata = clip.extradata
    if resize is not None:
        ctx.options = {"resize": f"{resize[0]}x{resize[1]}"}
    return ctx


def open_hwaccel_decoder(clip: Keyframes, shared: bool) -> Any:
    """FFmpeg's own decoder for the clip with NVDEC as its hwaccel, opened as the FFmpeg client opens it (``shared``:
    in PyTorch's primary context, started by PyTorch first as in the product; else in one of its own)."""
    from quadvault_dali.sampling._ffmpeg_decoder import open_hwaccel_context

    if shared:
        import torch

        torch.zeros(1, device="cuda")  # PyTorch's context first, with its flags, as in the product
    ctx = open_hwaccel_context(clip.codec, 0, shared=shared)
    ctx.extradata = clip.extradata
    return ctx


def decode_all(ctx: Any, packets: list[bytes], count: Callable[[list[Any]], int] = len) -> int:
    """Frames ``ctx`` puts out for ``packets``, each call's frames passed through ``count``."""
    return sum(count(ctx.decode(av.Packet(data))) for data in packets)


def run_row(clip: Keyframes, threads: int, copies: int, resize: tuple[int, int] | None, per_video: bool,
            software: bool = False, client: str = "cuvid") -> dict:
    """``copies`` copies of the clip's keyframes decoded on ``threads`` threads; frames/s over all of them.

    ``stream`` rows (``per_video`` false) open and warm each thread's decoder (one copy of the keyframes)
    before the clock starts, so they time decoding alone; the few warm-up frames a decoder still holds come
    out inside the timed part. ``per_video`` rows time a decoder per video, opening included (FFmpeg's cuvid
    decoder may set up a CUDA context of its own each time: an upper bound on a set-up)."""
    shares = [copies // threads + (i < copies % threads) for i in range(threads)]
    sizes: list[tuple[int, int]] = []

    def counted(frames: list[Any]) -> int:
        if frames and not sizes:
            sizes.append((frames[0].width, frames[0].height))
        return len(frames)

    def warm() -> tuple[Any, int]:
        ctx = open_decoder(clip, resize, software, client)
        return ctx, decode_all(ctx, clip.packets, counted)

    def worker(job: tuple[int, Any]) -> int:
        share, ctx = job
        frames = 0
        for _ in range(share):
            if ctx is None or per_video:
                if ctx is not None:
                    frames += counted(ctx.decode(None))  # the frames it still holds
                ctx = open_decoder(clip, resize, software, client)
            frames += decode_all(ctx, clip.packets, counted)
        if ctx is not None:
            frames += counted(ctx.decode(None))
        return frames

    warmed = [warm() for _ in range(threads)] if not per_video else []  # fails here, untimed, if it cannot open
    if per_video:
        decode_all(open_decoder(clip, resize, software, client), clip.packets[:1])
    contexts = [ctx for ctx, _ in warmed] or [None] * threads
    with UtilisationMonitor(metrics=("gpu", "decoder"), cpu=True) as busy:
        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            frames = sum(pool.map(worker, zip(shares, contexts)))
        seconds = time.perf_counter() - started
    warm_frames = sum(n for _, n in warmed)
    expected = (copies + len(warmed)) * len(clip.packets)
    # ``frames`` (timed) includes the warm-up frames a decoder held back (a few at most)
    return {"frames": frames + warm_frames, "expected_frames": expected, "seconds": round(seconds, 3),
            "frames_per_s": round(frames / seconds, 1), "output_size": f"{sizes[0][0]}x{sizes[0][1]}" if sizes else None,
            **busy.summary()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("clips", nargs="*", type=Path, help="video files (their keyframes are decoded)")
    ap.add_argument("--threads", default="1,4,8", help="decoding threads per row, comma-separated")
    ap.add_argument("--frames", type=int, default=4800, help="keyframes per row (copies of each clip's)")
    # a cuvid decoder opened per video decoded 17-29 frames/s on an H100 (a CUDA context per open): 400 frames
    # per row took 14-24 s there, and with 4 thread counts the 2160p rows never ran within the step's 100 s
    ap.add_argument("--per-video-frames", type=int, default=64, help="keyframes per per-video row (0: none)")
    ap.add_argument("--size", type=int, default=224, help="short side NVDEC's scaler resizes to in resized rows")
    ap.add_argument("--software", action="store_true",
                    help="FFmpeg's CPU decoders instead (full-size rows only): a reference, and a check without a GPU")
    ap.add_argument("--clients", default="cuvid",
                    help=f"comma-separated, of {', '.join(CLIENTS)}: how FFmpeg reaches NVDEC (hwaccel rows: stream, "
                         "full size)")
    ap.add_argument("--out", type=Path, default=None, help="JSON result path")
    args = ap.parse_args()
    clients = list(dict.fromkeys(c for c in args.clients.split(",") if c))
    unknown = set(clients) - set(CLIENTS)
    if unknown or not clients:
        ap.error(f"--clients: {', '.join(sorted(unknown)) or 'none given'} (each one of {', '.join(CLIENTS)})")
    if args.software and clients != ["cuvid"]:
        print("--software: FFmpeg's CPU decoders stand in for the cuvid rows only; no hwaccel rows", file=sys.stderr)
    info = machine()
    out = args.out or RESULTS / f"ceiling_{slug(info)}.json"
    doc: dict[str, Any] = {"benchmark": "nvdec_ceiling", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                           "machine": info, "versions": versions(), "results": []}
    if not args.clips:
        doc["error"] = "no clips given (the sampling clips not built yet?)"
    for path in args.clips:
        try:
            clip = read_keyframes(path)
            if not clip.packets:
                raise ValueError("no keyframes")
        except Exception as exc:  # noqa: BLE001 - a clip it cannot read is a row; the others still run
            doc["results"].append({"clip": path.name, "error": f"{type(exc).__name__}: {exc}"})
            print(f"  {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        small = scaled_size(clip.width, clip.height, args.size)
        rows = [("stream", None, args.frames, "cuvid"), ("stream", small, args.frames, "cuvid"),
                ("per-video", small, args.per_video_frames, "cuvid")]
        if args.software:
            rows = [("stream", None, args.frames, "cuvid"), ("per-video", None, args.per_video_frames, "cuvid")]
        rows = [r for r in rows if "cuvid" in clients] + \
            [("stream", None, args.frames, c) for c in clients if c != "cuvid" and not args.software]
        for threads in (int(t) for t in args.threads.split(",") if t):
            for kind, resize, frames, client in rows:
                if frames <= 0:
                    continue
                copies = max(threads, frames // len(clip.packets))
                row = {"clip": path.name, "codec": clip.codec, "resolution": f"{clip.width}x{clip.height}",
                       "keyframes_per_video": len(clip.packets), "videos": copies, "threads": threads,
                       "decoder": kind, "resize": f"{resize[0]}x{resize[1]}" if resize else None,
                       "hardware": not args.software, "client": "cpu" if args.software else client}
                try:
                    row.update(run_row(clip, threads, copies, resize, kind == "per-video", args.software, client))
                except Exception as exc:  # noqa: BLE001 - e.g. no NVDEC here: said in the row, the others still run
                    row["error"] = f"{type(exc).__name__}: {exc}"
                doc["results"].append(row)
                write_json(out, doc)  # after every row: a time limit keeps what was measured
                shown = f"{row['frames_per_s']:8.1f} frames/s" if "frames_per_s" in row else row["error"]
                print(f"  {path.name:28} {row['client']:11} {kind:9} {row['resize'] or 'full':9} threads={threads:<2} {shown}",
                      flush=True)
    write_json(out, doc)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
