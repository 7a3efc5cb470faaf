"""``quadvault sample``: write the sampled frames as JPEGs named by timestamp (a debugging aid)."""

from __future__ import annotations

from pathlib import Path

import click
from PIL import Image

from quadvault_dali.sampling import create_sampler

from .._files import atomic_path, remove_dead_temporaries
from ._options import device_option, fps_option, sampling_option


@click.command()
@click.argument("video", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Folder for the JPEGs (created).")
@fps_option
@sampling_option
@click.option("--size", type=click.IntRange(min=16), default=256, show_default=True, help="Short side in pixels.")
@click.option("--square", is_flag=True, help="Centre-crop to size x size, as the classifier sees frames.")
@device_option
def sample(video: Path, out_dir: Path, fps: float, mode: str, size: int, square: bool, device: str) -> None:
    """Sample VIDEO and write one JPEG per sampled frame, named by its presentation time.

    \b
    Example:
      quadvault sample DJI_0042.MP4 --out frames/ --fps 1 --size 256
      -> frames/DJI_0042_t0000.000.jpg, frames/DJI_0042_t0001.000.jpg, ...
    """
    sampler = create_sampler(device, fps=fps, mode=mode, size=size, square=square, batch_size=32)
    frames, times, outcome = sampler.sample_video(video)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(out_dir, f"{video.stem}_t")  # a killed run's half-written JPEG
    for image, t in zip(frames.permute(0, 2, 3, 1).cpu().numpy(), times):
        target = out_dir / f"{video.stem}_t{t:08.3f}.jpg"
        with atomic_path(target) as tmp:
            Image.fromarray(image).save(tmp, format="JPEG", quality=92)
    click.echo(f"{len(times)} frames ({outcome.mode} mode, {sampler.backend} backend, "
               f"{outcome.bytes_read / max(outcome.info.size_bytes, 1):.0%} of the file read) -> {out_dir}")
    if outcome.frames_expected and len(times) < outcome.frames_expected:
        click.echo(f"Warning: {outcome.frames_expected - len(times)} of {outcome.frames_expected} sampled frames "
                   "did not decode (damaged data); see -v for where", err=True)
