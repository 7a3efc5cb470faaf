"""The whole product on generated footage: library -> labels -> dataset -> model -> scan -> reel.

It is the README's first command, so a newcomer sees every step work on their own machine (GPU where
there is one, CPU otherwise) in a few minutes, with every output left in one folder to look at.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from .errors import OutputError
from .synth import SynthSpec, make_broken, make_video

Report = Callable[[str], None]
MARKER = ".quadvault-demo"
_OUTPUTS = ("labelled", "library", "dataset", "model", "scan", "labels.json", "highlights.mp4", "highlights.mp4.clips.csv")


@dataclass(frozen=True)
class SampleLibrary:
    root: Path
    labelled_highlights: list[Path]
    labelled_normal: list[Path]
    flights: list[Path]
    broken: list[Path]
    segments: dict[Path, tuple[tuple[str, float], ...]]  # flight -> its (style, seconds) runs


@dataclass
class DemoResult:
    root: Path
    steps: dict[str, float] = field(default_factory=dict)  # step -> seconds
    reel: Path | None = None
    top: list[tuple[str, float]] = field(default_factory=list)
    library: SampleLibrary | None = None


def build_sample_library(root: Path, *, labelled_per_class: int = 8, flights: int = 10) -> SampleLibrary:
    """Generated clips in two visibly different styles: ``root/labelled`` (the clips a user labelled)
    and ``root/library`` (flights nested by month, mixing both styles, with broken files among them)."""
    codecs = ("h264", "hevc")
    fps_choices = (24.0, 30.0, 60.0)
    hi, no = [], []
    for i in range(labelled_per_class):
        common = dict(width=256, height=144, duration_s=6.0, keyframe_interval_s=1.0, stamp=False, seed=i,
                      codec=codecs[i % 2], fps=fps_choices[i % 3])
        hi.append(make_video(root / "labelled" / f"highlight_{i:02d}.mp4", SynthSpec(style="highlight", **common)))
        no.append(make_video(root / "labelled" / f"normal_{i:02d}.mp4", SynthSpec(style="normal", **common)))
    shapes = [  # (segments) — the reel should cut the highlight part of each flight
        (("normal", 2.0), ("highlight", 9.0), ("normal", 1.0)),  # a highlight flight with a dull take-off
        (("highlight", 6.0), ("normal", 6.0)),
        (("normal", 12.0),),
        (("normal", 1.0), ("highlight", 11.0)),
        (("normal", 4.0), ("highlight", 4.0), ("normal", 4.0)),
    ]
    flight_paths = []
    segments_of: dict[Path, tuple[tuple[str, float], ...]] = {}
    for i in range(flights):
        segments = shapes[i % len(shapes)]
        spec = SynthSpec(width=320, height=180, duration_s=sum(s for _, s in segments), segments=segments,
                         codec=codecs[i % 2], fps=fps_choices[i % 3], keyframe_interval_s=1.0, stamp=False,
                         seed=100 + i, rotation=90 if i == 3 else 0, source_id=i)
        flight_paths.append(make_video(root / "library" / f"2026-0{1 + i % 3}" / f"DJI_{i:04d}.mp4", spec))
        segments_of[flight_paths[-1]] = segments
    broken = [make_broken(root / "library" / "2026-01" / "DJI_9990.mp4", "empty"),
              make_broken(root / "library" / "2026-02" / "notes.mp4", "text"),
              make_broken(root / "library" / "2026-03" / "DJI_9991.mp4", "truncated", source=flight_paths[0])]
    for day, path in enumerate([*flight_paths, *broken], start=1):  # dated as their month folders say: the
        year, month = (int(x) for x in path.parent.name.split("-"))  # per-month query and reel --order time
        when = datetime(year, month, day, 12, tzinfo=timezone.utc).timestamp()  # show it
        os.utime(path, (when, when))
    return SampleLibrary(root, hi, no, flight_paths, broken, segments_of)


def _prepare_folder(root: Path) -> None:
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists():
            raise OutputError("folder is not empty and was not made by the demo", path=root,
                              hint="give the demo an empty or new folder")
        for name in _OUTPUTS:  # only what an earlier demo wrote
            target = root / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `quadvault demo`\n")


def run_demo(root: str | Path, *, device: str = "auto", epochs: int = 4, report: Report = print) -> DemoResult:
    """Runs every step, reporting what it did and where the output is."""
    from .dataset import prepare_dataset
    from .reel import ReelOptions, make_reel
    from .scan.runner import ScanOptions, scan_library
    from .training import TrainConfig, train_model

    root = Path(root).expanduser().resolve()
    _prepare_folder(root)
    result = DemoResult(root)
    lib: SampleLibrary

    def step(name: str) -> Callable[[], None]:
        started = time.perf_counter()
        report(f"\n== {name} ==")
        return lambda: result.steps.__setitem__(name, round(time.perf_counter() - started, 1))

    done = step("1/6 Building a sample library")
    lib = result.library = build_sample_library(root)
    done()
    report(f"{len(lib.labelled_highlights) + len(lib.labelled_normal)} labelled clips in {root / 'labelled'}; "
           f"{len(lib.flights)} flights and {len(lib.broken)} broken files in {root / 'library'}")

    done = step("2/6 Writing labels.json")
    labels = {"highlights": ["labelled/highlight_*.mp4"], "normal": ["labelled/normal_*.mp4"]}
    (root / "labels.json").write_text(json.dumps(labels, indent=2) + "\n")
    done()
    report(f"{root / 'labels.json'} (glob patterns, relative to the file)")

    done = step("3/6 Preparing the dataset (1 frame per second)")
    prepared = prepare_dataset(root / "labels.json", root / "dataset", size=128, device=device)
    done()
    report(f"Dataset prepared: {prepared.frames:,} frames — Highlights: {prepared.frames_by_label[1]:,} — "
           f"Normal: {prepared.frames_by_label[0]:,} — Saved to: {prepared.path}")

    done = step(f"4/6 Training the classifier ({epochs} epochs)")
    trained = train_model(TrainConfig(dataset=root / "dataset", output_dir=root / "model", epochs=epochs,
                                      batch_size=16, learning_rate=5e-4, image_size=96, device=device,
                                      backbone="efficientnet-lite0", patience=epochs, seed=0), report=report)
    done()

    done = step("5/6 Scanning the library into Parquet")
    summary = scan_library([root / "library"], ScanOptions(out_dir=root / "scan", threshold=0.7, device=device),
                           model_paths=[trained.model_dir])
    done()
    report(summary.line)
    report(f"(scanned at --threshold 0.7; a plain `quadvault scan` uses the model card's, here "
           f"{trained.threshold:.2f})")
    highlights = json.loads(summary.highlights_path.read_text())
    entries = highlights.get("highlights", [])
    result.top = [(h["path"], float(h["score"])) for h in entries[:5]]
    report("Top highlights:")
    for rank, (path, score) in enumerate(result.top, 1):
        report(f"  {rank}. {score:.2f}  {Path(path).relative_to(root)}")

    done = step("6/6 Cutting a highlight reel")
    reel = make_reel(root / "scan", root / "highlights.mp4",
                     ReelOptions(top=6, min_score=0.5, clip_seconds=3.0, fade_s=0.5, width=640, height=360,
                                 fps=30.0, device=device))  # type: ignore[arg-type]
    done()
    result.reel = root / "highlights.mp4"
    report(f"Reel: {result.reel} ({len(reel.prepared.plan.clips)} clips: the best 3 s window of each video whose "
           f"best window scores ≥ 0.5, so also highlight moments of videos not listed above; encoder "
           f"{reel.render.encoder}); cut list: {reel.sidecar}")
    report("\nDone in " + ", ".join(f"{k.split(' ', 1)[1].split(' (')[0].lower()} {v:.0f}s" for k, v in result.steps.items()))
    report(f"Everything is in {root}. Next: label your own clips in a labels.json and run "
           "`quadvault prepare-dataset labels.json data/`.")
    return result
