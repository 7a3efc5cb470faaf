"""Training input throughput: the DALI pipeline against a torchvision DataLoader + PIL, in one run.

Measures, at 224 px with ResNet18 (efficientnet-lite0 when its weights cannot be had), bf16 on a GPU:
  - loader-only images/s for DALI and for the DataLoader baseline (same augmentations),
  - the model's own training step rate on synthetic tensors already on the device (the ceiling),
  - end-to-end training images/s fed by each loader, and GPU utilisation during the DALI run.
On an H100 the goal is DALI >= 3x the baseline and >= 90 % of the model's step rate.

    python benchmarks/train_bench.py            # full run (GPU machine)
    python benchmarks/train_bench.py --quick    # under a minute on a small CPU
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from PIL import Image

from _gpu_monitor import UtilisationMonitor
from _results import write_json
from quadvault_dali.model import build_network, library_versions, spec_for
from quadvault_dali.training import DaliFrameLoader, FrameTable
from quadvault_dali.training._config import loader_threads, resnet18_weights_available
from quadvault_dali.training._step import SHOW_EVERY, TrainStep

RESULTS = Path(__file__).resolve().parent / "results"


def make_jpegs(root: Path, n: int, size: tuple[int, int] = (456, 256)) -> list[str]:
    """Frames the size prepare-dataset stores (short side 256), with texture so JPEG work is realistic."""
    rng = np.random.default_rng(0)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    files = []
    for i in range(n):
        base = np.stack([(xx + 7 * i) % 256, (yy * 2 + 3 * i) % 256, (xx + yy + 11 * i) % 256], -1)
        img = (base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8)
        path = root / f"{i:06d}.jpg"
        Image.fromarray(img).save(path, quality=90)
        files.append(str(path))
    return files


class PilDataset(torch.utils.data.Dataset):
    """The baseline: PIL decode + torchvision transforms with the DALI pipeline's augmentations."""

    def __init__(self, files: list[str], image_size: int, mean: Iterable[float], std: Iterable[float]) -> None:
        from torchvision import transforms as T

        self.files = files
        self.transform = T.Compose([
            T.RandomResizedCrop(image_size, scale=(0.35, 1.0), ratio=(3 / 4, 4 / 3)),
            T.RandomHorizontalFlip(), T.RandomRotation(10),
            T.ColorJitter(0.2, 0.2, 0.2, 8 / 360), T.ToTensor(), T.Normalize(list(mean), list(std))])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        with Image.open(self.files[i]) as im:
            return self.transform(im.convert("RGB")), i


def _drain(batches: Iterable[Any], device: torch.device, max_batches: int,
           step: TrainStep | None = None) -> tuple[int, float]:
    """(images, seconds) over up to ``max_batches`` after one warm-up batch; with ``step``, each batch trains
    as in ``quadvault train`` (its stream, its reads of the running loss every SHOW_EVERY batches)."""
    it = iter(batches)
    with step.running() if step is not None else contextlib.nullcontext():
        first = next(it)
        if step is not None:
            step(*first)
        _sync(device)
        n, start = 0, time.perf_counter()
        for k, (images, rows) in enumerate(it, start=1):
            if k > max_batches:
                break
            if step is not None:
                step(images, rows)
                if k % SHOW_EVERY == 0:
                    step.totals()
            else:
                images = images.to(device, non_blocking=True)
            n += images.shape[0]
        if step is not None:
            step.totals()
    _sync(device)
    return n, time.perf_counter() - start


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(net: torch.nn.Module, opt: torch.optim.Optimizer, device: torch.device, rows: int, *,
              priority: bool = True) -> TrainStep:
    """The training loop's own step (bf16 autocast on CUDA, channels_last), over ``rows`` frames."""
    return TrainStep(net, opt, None, torch.ones(rows), torch.tensor(1.0, device=device), device, priority=priority)


def machine(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        cpu = re.search(r"model name\s*:\s*(.+)", text).group(1).strip()  # type: ignore[union-attr]
    except (OSError, AttributeError):
        pass
    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "gpu": None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _rate(n: int, s: float) -> float:
    return round(n / s, 1) if s > 0 else 0.0


def run(args: argparse.Namespace) -> dict[str, Any]:
    from quadvault_dali.device import resolve_device

    backend = resolve_device(args.device)
    device = torch.device("cuda:0") if backend == "gpu" else torch.device("cpu")
    # Throughput does not depend on the weights' values: without ResNet18's ImageNet weights (offline
    # machines) the guide's ResNet18 is still what is measured, randomly initialised.
    arch = args.backbone or "resnet18"
    weights = "auto" if arch != "resnet18" or resnet18_weights_available() else "none"
    if weights == "none":
        print("ResNet18 ImageNet weights cannot be had here; timing a randomly initialised ResNet18 "
              "(same cost per image)")
    spec = spec_for(arch)
    tmp = Path(tempfile.mkdtemp(prefix="train_bench_"))
    try:
        files = make_jpegs(tmp, args.images)
        table = FrameTable(files, np.zeros(len(files), np.int64), [str(i) for i in range(len(files))])
        bs, size, nb, nl = args.batch_size, args.image_size, args.batches, args.loader_batches
        workers = loader_threads(args.workers or None)  # what `quadvault train` uses by default
        dali = DaliFrameLoader(table, image_size=size, mean=spec.mean, std=spec.std, train=True, batch_size=bs,
                               backend=backend, num_threads=workers)
        # the same augmentation from whole-frame decodes: the hardware JPEG engine (A100/H100) can take them
        try:
            dali_full: DaliFrameLoader | None = DaliFrameLoader(
                table, image_size=size, mean=spec.mean, std=spec.std, train=True, batch_size=bs, backend=backend,
                num_threads=workers, jpeg_decode="full")
        except Exception as exc:  # noqa: BLE001 - a variant that cannot start must not cost the other numbers
            print(f"jpeg_decode='full' loader failed: {type(exc).__name__}: {exc}")
            dali_full = None
        loader = torch.utils.data.DataLoader(PilDataset(files, size, spec.mean, spec.std), batch_size=bs,
                                             shuffle=True, num_workers=workers, drop_last=True,
                                             pin_memory=device.type == "cuda", persistent_workers=True)
        net = build_network(arch, image_size=size, pretrained=weights).to(device, memory_format=torch.channels_last)
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)  # one optimiser: both steps train the same net
        step = make_step(net, opt, device, len(files))
        default_stream = make_step(net, opt, device, len(files), priority=False) if device.type == "cuda" else None
        results: dict[str, Any] = {}

        def forever(source: Any) -> Iterable[Any]:
            while True:
                yield from source

        dali_stream, baseline_stream = forever(dali), forever(loader)  # one pass each, never restarted
        full_stream = forever(dali_full) if dali_full is not None else None
        n, s = _drain(dali_stream, device, nl)
        results["dali_loader_images_per_s"] = _rate(n, s)
        if full_stream is not None:
            n, s = _drain(full_stream, device, nl)
            results["dali_full_decode_loader_images_per_s"] = _rate(n, s)
        n, s = _drain(baseline_stream, device, nl)
        results["baseline_loader_images_per_s"] = _rate(n, s)
        synthetic = torch.randn(bs, 3, size, size, device=device)
        rows = torch.arange(bs)
        n, s = _drain(((synthetic, rows) for _ in range(nb + 1)), device, nb, step)
        results["model_step_images_per_s"] = _rate(n, s)
        # The training loop's step on its high-priority stream, and (CUDA) the same step on an ordinary stream,
        # in alternating passes: one pass each had them in the order of the GPU's warming up.
        passes: dict[str, list[float]] = {"dali_train_images_per_s": [], "dali_default_stream_train_images_per_s": []}
        busy: list[dict[str, Any]] = []
        for _ in range(args.repeats):
            with _monitor(device) as gpu:
                n, s = _drain(dali_stream, device, nb, step)
            passes["dali_train_images_per_s"].append(_rate(n, s))
            busy.append(gpu.summary())
            if default_stream is not None:
                n, s = _drain(dali_stream, device, nb, default_stream)
                passes["dali_default_stream_train_images_per_s"].append(_rate(n, s))
        for key, rates in passes.items():
            if rates:
                results[key] = float(np.median(rates))
                results[key.replace("_images_per_s", "_passes")] = rates
        results["gpu_utilisation_percent_dali_train"] = busy[len(busy) // 2].get("gpu_util_mean")
        results["utilisation_dali_train"] = busy[len(busy) // 2]
        if full_stream is not None:
            with _monitor(device) as gpu:
                n, s = _drain(full_stream, device, nb, step)
            results["dali_full_decode_train_images_per_s"] = _rate(n, s)
            results["utilisation_dali_full_decode_train"] = gpu.summary()  # how much the JPEG engine took
        with _monitor(device) as gpu:
            n, s = _drain(baseline_stream, device, nb, step)
        results["baseline_train_images_per_s"] = _rate(n, s)
        results["gpu_utilisation_percent_baseline_train"] = gpu.summary().get("gpu_util_mean")
        d, b, m = (results["dali_train_images_per_s"], results["baseline_train_images_per_s"],
                   results["model_step_images_per_s"])
        results["dali_vs_baseline_train"] = round(d / b, 2) if b else None
        results["dali_train_vs_model_step"] = round(d / m, 3) if m else None
        full = results.get("dali_full_decode_train_images_per_s")
        results["dali_full_decode_train_vs_model_step"] = round(full / m, 3) if m and full else None
        plain = results.get("dali_default_stream_train_images_per_s")
        results["dali_default_stream_train_vs_model_step"] = round(plain / m, 3) if m and plain else None
        results["dali_vs_baseline_loader"] = (round(results["dali_loader_images_per_s"]
                                                    / results["baseline_loader_images_per_s"], 2)
                                              if results["baseline_loader_images_per_s"] else None)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    note = ("quick smoke run: few batches on a small shared machine, numbers are noisy and not comparable "
            "with full GPU runs") if args.quick else None
    return {"benchmark": "train", "quick": args.quick, "note": note, "backend": backend, "machine": machine(device),
            "versions": library_versions(),
            "config": {"architecture": arch, "weights": "imagenet" if weights == "auto" else "random",
                       "image_size": size, "batch_size": bs, "train_batches_timed": nb, "loader_batches_timed": nl,
                       "images_in_set": args.images, "loader_workers": workers, "repeats": args.repeats,
                       "precision": "bf16 autocast" if device.type == "cuda" else "fp32"},
            "results": results, "goals_h100": {"dali_vs_baseline_train": ">= 3", "dali_train_vs_model_step": ">= 0.9"}}


def _monitor(device: torch.device) -> UtilisationMonitor:
    """SM and JPEG-engine utilisation on CUDA; on the CPU a monitor that reads nothing (an empty summary)."""
    if device.type == "cuda":
        return UtilisationMonitor(index=device.index or 0, metrics=("gpu", "jpeg"))
    return UtilisationMonitor(reader=None, metrics=())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few images and batches (CPU smoke run)")
    parser.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto")
    parser.add_argument("--backbone", choices=["resnet18", "efficientnet-lite0"], default=None)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None, help="timed batches per training measurement")
    parser.add_argument("--loader-batches", type=int, default=None,
                        help="timed batches per loader-only measurement (well above the prefetch depth)")
    parser.add_argument("--images", type=int, default=None, help="JPEGs in the generated set")
    parser.add_argument("--repeats", type=int, default=3,
                        help="alternating passes of the DALI-fed step on its priority stream and on an ordinary one")
    parser.add_argument("--workers", type=int, default=0,
                        help="DataLoader workers / DALI threads (0 = what quadvault train uses: the cores, 2 to 16)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.batch_size = args.batch_size or (4 if args.quick else 256)
    args.batches = args.batches or (4 if args.quick else 40)
    args.loader_batches = args.loader_batches or (24 if args.quick else 100)
    args.images = args.images or (4 * args.batch_size if args.quick else 4096)
    report = run(args)
    m = report["machine"]
    name = re.sub(r"[^a-z0-9]+", "-", (m["gpu"] or m["cpu"]).lower()).strip("-")
    out = args.out or RESULTS / f"train_{name}.json"
    write_json(out, report)
    print(json.dumps(report["results"], indent=2))
    print(f"-> {out}")


if __name__ == "__main__":
    main()
