"""HDR footage (PQ, HLG) is tone-mapped to SDR on every decoder path, and scans rescan only their HDR videos.

The clips are generated from colour bars of known SDR appearance, encoded as an HDR grade would show them
(BT.2408: SDR reference white at 203 cd/m², BT.2020 primaries); read as SDR they came out grey and dim (white
235 -> 144 from PQ) and the demo model scored identical bars 0.90 in SDR, 0.51 in HLG, 0.16 in PQ.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from av.video.reformatter import Interpolation
from click.testing import CliRunner

from quadvault_dali.cli.main import main as cli
from quadvault_dali.model import build_network, load_model, save_model
from quadvault_dali.model._io import sdr_fingerprints
from quadvault_dali.probe import probe_video
from quadvault_dali.sampling import create_sampler
from quadvault_dali.sampling._colour import hdr_to_sdr, to_sdr
from quadvault_dali.sampling._nvdec import nvdec_limitation
from quadvault_dali.scan.runner import ScanOptions, scan_library
from quadvault_dali.scan.schema import ModelRef, combined_fingerprint
from quadvault_dali.scan.shards import complete_shards, read_table, write_parquets_atomic
from quadvault_dali.synth import SynthSpec, make_video

#: SDR colours (as BT.709 shows them) below the tone curve's knee, so an HDR grade of them maps back exactly
BARS = {"red": (180, 30, 30), "green": (30, 170, 30), "blue": (30, 40, 180), "grey": (128, 128, 128),
        "dark": (20, 20, 20), "light": (185, 185, 185)}
_BT709_TO_BT2020 = np.array([[0.6274, 0.3293, 0.0433], [0.0691, 0.9195, 0.0114], [0.0164, 0.0880, 0.8956]])


def _pq_signal(sdr: tuple[int, int, int]) -> np.ndarray:
    """The PQ R'G'B' (BT.2020) showing ``sdr`` as a BT.2408 grade does: SDR white at 203 cd/m²."""
    nits = _BT709_TO_BT2020 @ ((np.asarray(sdr) / 255.0) ** 2.4) * 203.0
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = np.power(np.clip(nits / 10000.0, 0, 1), m1)
    return np.power((c1 + c2 * y) / (1 + c3 * y), m2)


def _pq_of_nits(nits: float) -> float:
    m1, m2, c1, c2, c3 = 2610 / 16384, 2523 / 4096 * 128, 3424 / 4096, 2413 / 4096 * 32, 2392 / 4096 * 32
    y = (nits / 10000.0) ** m1
    return float(((c1 + c2 * y) / (1 + c3 * y)) ** m2)


def _hlg_grey_signal(level: int) -> float:
    """The HLG signal of an SDR grey ``level``: the inverse of the 1000-cd/m² display's OOTF, then the OETF."""
    nits = (level / 255.0) ** 2.4 * 203.0
    scene = (nits / 1000.0) ** (1 / 1.2)
    a, b, c = 0.17883277, 0.28466892, 0.55991073
    return float(np.sqrt(3 * scene) if scene <= 1 / 12 else a * np.log(12 * scene - b) + c)


def test_pq_and_hlg_signals_map_back_to_the_sdr_colours_they_grade() -> None:
    signal = torch.tensor(np.array([_pq_signal(rgb) for rgb in BARS.values()]), dtype=torch.float32)
    sdr = hdr_to_sdr(signal.T.reshape(1, 3, 1, -1), "smpte2084")[0, :, 0].T.numpy().astype(int)
    assert np.abs(sdr - np.array(list(BARS.values()))).max() <= 1
    # above the knee, light up to the 1000-cd/m² peak rolls off into what is left, kept apart (clouds, sky), and a
    # bright colour keeps its hue: a shoulder reaching white only at infinity put all of it into codes 250-255
    nits = (203.0, 300.0, 450.0, 700.0, 1000.0, 4000.0)
    greys = hdr_to_sdr(torch.tensor([_pq_of_nits(n) for n in nits]).expand(1, 3, 1, 6).contiguous(),
                       "smpte2084")[0, 0, 0].tolist()
    assert greys == sorted(greys) and len(set(greys[:5])) == 5 and greys[0] < 235 and greys[4:] == [255, 255]
    orange = torch.tensor([_pq_of_nits(n) for n in (600.0, 250.0, 60.0)], dtype=torch.float32).view(1, 3, 1, 1)
    r, g, b = hdr_to_sdr(orange, "smpte2084").flatten().tolist()
    assert r > g > b and r - b > 60, (r, g, b)
    greys = (20, 128, 185)
    hlg = torch.tensor([_hlg_grey_signal(g) for g in greys], dtype=torch.float32).expand(1, 3, 1, 3).contiguous()
    assert hdr_to_sdr(hlg, "arib-std-b67")[0, 0, 0].tolist() == pytest.approx(greys, abs=1)
    white = hdr_to_sdr(torch.full((1, 3, 1, 1), 0.75), "arib-std-b67")  # HLG reference white, past the knee
    assert 215 <= int(white.flatten()[0]) < 240
    frames = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(to_sdr(frames, "bt709"), frames) and torch.equal(to_sdr(frames, "unknown"), frames)
    for transfer in ("smpte2084", "arib-std-b67"):  # the samplers' 8-bit lookup is the tone curve exactly
        assert torch.equal(to_sdr(frames, transfer), hdr_to_sdr(frames.float() / 255.0, transfer))


def make_hdr_clip(path: Path, transfer: str, *, seconds: float = 3.0, width: int = 384, height: int = 160) -> Path:
    """10-bit HEVC with the ``BARS`` side by side, as a PQ (transfer "pq") or HLG ("hlg"; the greys only) grade,
    tagged BT.2020 with that transfer, 1-s keyframes. At least 144 rows: NVDEC takes no smaller HEVC (stop 31's
    H100 lease: a 64-row clip fell back to PyAV, so the gpu test never saw NVDEC's tone mapping)."""
    names = list(BARS) if transfer == "pq" else ["dark", "grey", "light"]
    values = [_pq_signal(BARS[n]) if transfer == "pq" else np.full(3, _hlg_grey_signal(BARS[n][0])) for n in names]
    picture = np.zeros((height, width, 3))
    for i, value in enumerate(values):
        picture[:, i * width // len(names): (i + 1) * width // len(names)] = value
    rgb = av.VideoFrame.from_ndarray(np.round(picture * 65535).astype(np.uint16), format="rgb48le")
    yuv = rgb.reformat(format="yuv420p10le", dst_colorspace="BT2020", dst_color_range="MPEG",
                       interpolation=int(Interpolation.BICUBIC) | int(Interpolation.ACCURATE_RND))
    trc = 16 if transfer == "pq" else 18
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx265", rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p10le"
        ctx = stream.codec_context
        ctx.color_primaries, ctx.color_trc, ctx.colorspace, ctx.color_range = 9, trc, 9, 1
        stream.options = {"x265-params": "keyint=10:min-keyint=10:log-level=error", "crf": "10"}
        for i in range(int(seconds * 10)):
            frame = yuv.reformat(format="yuv420p10le")
            frame.pts, frame.time_base = i, Fraction(1, 10)
            frame.color_primaries, frame.color_trc, frame.colorspace, frame.color_range = 9, trc, 9, 1
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def _bar_colours(image: np.ndarray, count: int) -> np.ndarray:
    """The median colour of the middle of each of ``count`` bars in an ``(H, W, 3)`` picture."""
    h, w = image.shape[:2]
    return np.array([np.median(image[h // 4: 3 * h // 4, (2 * i + 1) * w // (2 * count) - w // (8 * count):
                                      (2 * i + 1) * w // (2 * count) + w // (8 * count)].reshape(-1, 3), axis=0)
                     for i in range(count)])


@pytest.fixture(scope="module")
def hdr_clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("hdr")
    clips = {kind: make_hdr_clip(root / f"bars_{kind}.mp4", kind) for kind in ("pq", "hlg")}
    for clip in clips.values():  # the gpu test checks NVDEC's colours, not the PyAV fallback's
        assert nvdec_limitation(probe_video(clip)) is None, clip
    return clips


def test_probe_names_the_transfer_and_the_cpu_sampler_shows_the_sdr_colours(hdr_clips: dict[str, Path]) -> None:
    assert probe_video(hdr_clips["pq"]).color_transfer == "smpte2084"
    assert probe_video(hdr_clips["hlg"]).color_transfer == "arib-std-b67"
    table = CliRunner().invoke(cli, ["probe", str(hdr_clips["pq"]), str(hdr_clips["hlg"])])
    shown = {line.split()[-1]: line.split()[-3] for line in table.output.splitlines()[1:3]}
    assert table.exit_code == 0 and shown == {str(hdr_clips["pq"]): "PQ", str(hdr_clips["hlg"]): "HLG"}
    sampler = create_sampler("cpu", fps=1.0, size=64, square=False, mode="exact")
    for kind, names in (("pq", list(BARS)), ("hlg", ["dark", "grey", "light"])):
        frames, times, outcome = sampler.sample_video(hdr_clips[kind])
        assert outcome.error is None and times == [0.0, 1.0, 2.0]
        image = frames[1].permute(1, 2, 0).numpy()
        got = _bar_colours(image, len(names))
        # within 4 levels: 4:2:0 chroma, x265 at crf 10 and 8-bit RGB before the tone curve
        assert np.abs(got - np.array([BARS[n] for n in names])).max() <= 4, (kind, got)


@pytest.mark.gpu
@pytest.mark.parametrize("client", ["dali", "ffmpeg"])
def test_the_gpu_sampler_tone_maps_hdr_as_the_cpu_one_does(hdr_clips: dict[str, Path], client: str) -> None:
    """DALI (8-bit RGB, converted as BT.601 and corrected, ``_gpu._displayed``) and the FFmpeg client
    (``planes_to_rgb``) tone-map the same way as the CPU sampler: the bars within a few levels of both."""
    cpu = create_sampler("cpu", fps=1.0, size=64, square=False, mode="exact")
    gpu = create_sampler("gpu", fps=1.0, size=64, square=False, mode="exact", decode_client=client)
    for kind, names in (("pq", list(BARS)), ("hlg", ["dark", "grey", "light"])):
        want = _bar_colours(cpu.sample_video(hdr_clips[kind])[0][1].permute(1, 2, 0).numpy(), len(names))
        frames, _, outcome = gpu.sample_video(hdr_clips[kind])
        assert outcome.error is None and outcome.decoder == "nvdec", outcome
        got = _bar_colours(frames[1].cpu().permute(1, 2, 0).numpy(), len(names))
        assert np.abs(got - want).max() <= 6 and np.abs(got - np.array([BARS[n] for n in names])).max() <= 8, got


def test_the_reel_shows_hdr_sources_in_their_sdr_colours(hdr_clips: dict[str, Path], tmp_path: Path) -> None:
    listing = tmp_path / "highlights.json"
    listing.write_text(json.dumps({"highlights": [{"path": str(hdr_clips["pq"]), "score": 0.9}]}))
    out = tmp_path / "reel.mp4"
    result = CliRunner().invoke(cli, ["reel", str(listing), str(out), "--min-score", "0", "--clip-seconds", "2",
                                      "--resolution", "384x160", "--fps", "10", "--no-transitions", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    with av.open(str(out)) as reel:
        stream = reel.streams.video[0]
        assert stream.codec_context.color_trc == 1 and stream.codec_context.color_primaries == 1  # SDR BT.709
        frame = next(reel.decode(stream)).to_ndarray(format="rgb24")
    got = _bar_colours(frame, len(BARS))
    assert np.abs(got - np.array(list(BARS.values()))).max() <= 5, got


def test_a_resumed_scan_rescans_the_hdr_videos_of_an_older_scoring_and_keeps_the_sdr_ones(
        hdr_clips: dict[str, Path], tmp_path: Path) -> None:
    """Scoring version 3 changed only HDR videos' pixels: rows version 2 wrote of SDR videos still hold. Rows of a
    shard written before schema 1.6 learn their transfer when the shard is upgraded."""
    lib = tmp_path / "lib"
    lib.mkdir()
    for kind, clip in hdr_clips.items():
        (lib / clip.name).write_bytes(clip.read_bytes())
    for i in range(3):
        make_video(lib / f"sdr_{i}.mp4", SynthSpec(width=96, height=64, duration_s=2.0, seed=i))
    torch.manual_seed(0)
    net = build_network("efficientnet-lite0", image_size=64, pretrained="none").eval()
    model_dir = save_model(tmp_path / "model", net, {"architecture": "efficientnet-lite0", "image_size": 64,
                                                      "name": "tiny"})
    model = load_model(model_dir)
    out = tmp_path / "out"
    options = dict(out_dir=out, device="cpu", batch_size=8)
    scan_library([lib], ScanOptions(**options), model_paths=[model_dir])
    digest = json.loads((model_dir / "model.json").read_text())["weights_sha256"]
    old = combined_fingerprint([ModelRef(model.name, sdr_fingerprints(model.card, digest)[0])])
    for name in complete_shards(out):  # as version 2 with schema 1.5 wrote them: no transfer, the old fingerprint
        path = out / "videos" / name
        table = pq.read_table(path)
        rows = [{**row, "model_fingerprint": old, "color_transfer": None} for row in table.to_pylist()]
        meta = dict(table.schema.metadata)
        meta[b"quadvault.schema_version"] = b"1.5"
        write_parquets_atomic([(path, pa.Table.from_pylist(rows, schema=table.schema.with_metadata(meta)))])
    before = {v["path"]: v["score"] for v in read_table(out, "videos").to_pylist()}

    again = scan_library([lib], ScanOptions(**options), model_paths=[model_dir])
    assert again.run.videos == 2 and again.skipped == 3  # the PQ and the HLG clip
    after = {v["path"]: v for v in read_table(out, "videos").to_pylist()}
    sdr = [p for p in after if "sdr_" in p]
    assert {p: after[p]["score"] for p in sdr} == {p: before[p] for p in sdr}
    assert {v["color_transfer"] for v in after.values()} == {"unknown", "smpte2084", "arib-std-b67"}
    assert {v["model_fingerprint"] for v in after.values()} == {model.fingerprint}
    assert scan_library([lib], ScanOptions(**options), model_paths=[model_dir]).run.videos == 0


def test_a_dataset_prepared_before_tone_mapping_extracts_its_hdr_videos_again(hdr_clips: dict[str, Path],
                                                                               tmp_path: Path) -> None:
    """A dataset (format 1) or a killed run's manifest written before tone mapping holds HDR frames grey and dim;
    --merge reused them beside tone-mapped ones while scan scored tone-mapped frames (a reviewer's find). Its HDR
    videos are extracted again, keeping their split; its SDR ones are reused."""
    from quadvault_dali.dataset import prepare_dataset, read_dataset
    from quadvault_dali.dataset._table import DATASET_FILE

    (tmp_path / "clips").mkdir()
    sdr = make_video(tmp_path / "clips" / "sdr.mp4", SynthSpec(width=96, height=64, duration_s=3.0,
                                                               style="highlight", seed=3))
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"highlights": [str(hdr_clips["pq"])], "normal": [str(sdr)]}))
    out = tmp_path / "ds"
    prepare_dataset(labels, out, size=64, device="cpu")
    table = pq.read_table(out / DATASET_FILE)
    rows = table.to_pylist()
    hdr_frames = [out / r["frame_path"] for r in rows if r["video_path"] == str(hdr_clips["pq"])]
    sdr_frames = {out / r["frame_path"]: (out / r["frame_path"]).stat().st_ino for r in rows
                  if r["video_path"] == str(sdr)}
    good = hdr_frames[0].read_bytes()
    for frame in hdr_frames:  # as the earlier version wrote them (any other picture stands in)
        frame.write_bytes(next(iter(sdr_frames)).read_bytes())
    meta = dict(table.schema.metadata)
    settings = json.loads(meta[b"quadvault.dataset"])
    meta[b"quadvault.dataset"] = json.dumps({**settings, "format_version": 1}).encode()
    pq.write_table(table.replace_schema_metadata(meta), out / DATASET_FILE)
    splits = {r["video_path"]: r["split"] for r in rows}

    result = prepare_dataset(labels, out, merge=True, size=64, device="cpu")
    assert [p.name for p in result.extracted] == ["bars_pq.mp4"] and [p.name for p in result.reused] == ["sdr.mp4"]
    assert hdr_frames[0].read_bytes() == good
    assert {p: p.stat().st_ino for p in sdr_frames} == sdr_frames  # not written again
    assert {r["video_path"]: r["split"] for r in read_dataset(out).rows()} == splits
    assert read_dataset(out).settings["format_version"] == 2
