"""The training loop: fine-tune, validate per video, keep the best checkpoint, stop when it stops improving.

Runs as one process, or as one rank of a DistributedDataParallel job (DALI sharded per rank; validation
scores gathered so every rank computes the same metrics and rank 0 writes the model).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .._files import atomic_path, remove_dead_temporaries
from ..device import resolve_device
from ..errors import BackendUnavailableError, DatasetError, OutputError, QuadvaultError
from ..metrics import balanced_accuracy, best_threshold, binary_metrics, video_scores
from ..model import CARD_FILE, build_network, save_model, spec_for
from ..progress import progress_bar
from ._config import EpochRecord, TrainConfig, TrainResult, loader_threads, pretrained_label, resolve_backbone
from ._data import (DaliFrameLoader, FrameTable, LoaderCheckpointError, TrainingData, load_training_data,
                    video_balance_weights)
from ._resume import (LOSS_WEIGHTING, RunPosition, load_saved, remove_state, restore, resume_seed, run_settings,
                      save_state)
from ._step import SHOW_EVERY, TrainStep

log = logging.getLogger(__name__)
Report = Callable[[str], None]
HISTORY_FILE = "training_history.json"


def prepare_output_dir(path: Path) -> None:
    """Creates the model folder and checks that it takes files, before any work: a bad ``--output-dir``
    used to surface as a raw traceback when the first model was saved, after loading and checking the data."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        raise OutputError(f"cannot be the model folder: {blocker} is a file", path=path,
                          hint="choose another --output-dir") from None
    except OSError as exc:
        raise OutputError(f"cannot write the model folder: {exc.strerror or exc}", path=path,
                          hint="choose another --output-dir") from None


def _bar(total: int, desc: str, show: bool) -> "contextlib.AbstractContextManager":
    """The shared progress bar on rank 0; other ranks stay silent."""
    return progress_bar(total, desc, unit="batch") if show else contextlib.nullcontext(_Silent())


class _Silent:
    def update(self, n: int = 1) -> None: ...

    def set_postfix(self, **kwargs: object) -> None: ...


def _lr_lambda(total: int, warmup: int, start: int = 0) -> Callable[[int], float]:
    """0 before ``start`` (a frozen group; DDP-safe freezing), then linear warm-up and cosine decay to zero.

    Both run over the group's own steps from ``start``: counted from step 0, a backbone unfrozen after its
    warm-up jumped from 0 to full rate at once, the shock to pretrained features the warm-up is there to avoid.
    """
    span = max(1, total - start)
    warm = max(1, min(warmup, span // 2))

    def factor(step: int) -> float:
        if step < start:
            return 0.0
        step -= start
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / max(1, span - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _set_backbone_frozen(net: nn.Module, frozen: bool, distributed: bool) -> None:
    # BatchNorm statistics must not drift while the weights are held; outside DDP also skip the gradients
    net.backbone.train(not frozen)
    if not distributed:  # DDP expects the same parameters to get gradients every step
        for p in net.backbone.parameters():
            p.requires_grad_(not frozen)


def _hold_batchnorm_statistics(net: nn.Module) -> None:
    """Keeps every BatchNorm layer on its ImageNet running statistics while the rest trains.

    A personal dataset is small and batches are small: batch statistics differ from the running ones
    the model is evaluated with, so a net trained on batch statistics scores differently in eval mode
    (seen: 'normal' frames near 0.5 after training although the training loss said ~0). The affine
    BatchNorm weights still learn. Only for pretrained weights: from scratch the statistics are the
    initial mean 0 / variance 1, and holding them trains a net without normalisation (it learned nothing).
    """
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def _train_epoch(step: TrainStep, loader: DaliFrameLoader, desc: str, show: bool) -> tuple[float, float, int]:
    """One pass over the training frames: (mean loss, accuracy, frames counted)."""
    step.reset()
    with _bar(len(loader), desc, show) as bar, step.running():
        for k, (images, rows) in enumerate(loader, start=1):
            step(images, rows)
            bar.update(1)
            if show and (k % SHOW_EVERY == 0 or k == len(loader)):  # each read waits for the GPU
                loss_sum, correct, seen = step.totals()
                bar.set_postfix(loss=f"{loss_sum / max(seen, 1):.4f}", acc=f"{100 * correct / max(seen, 1):.1f}%")
    loss_sum, correct, seen = step.totals()
    return loss_sum / max(seen, 1), correct / max(seen, 1), seen


@torch.inference_mode()
def frame_probabilities(model: nn.Module, loader: DaliFrameLoader, frames: FrameTable, device: torch.device,
                        world: int, desc: str, show: bool) -> tuple[np.ndarray, float]:
    """Probabilities for every frame of an evaluation ``loader`` over ``frames`` (row-aligned) and the mean
    unweighted BCE: validation, the test measurement, and ``evaluate`` on a dataset all score this way."""
    model.eval()
    cuda = device.type == "cuda"
    rows_out, probs_out = [], []
    with _bar(len(loader), desc, show) as bar:
        for images, rows in loader:
            images = images.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
                logits = model(images)
            rows_out.append(rows.numpy())
            probs_out.append(torch.sigmoid(logits.float()).cpu().numpy())
            bar.update(1)
    rows_np = np.concatenate(rows_out) if rows_out else np.zeros(0, dtype=np.int64)
    probs_np = np.concatenate(probs_out) if probs_out else np.zeros(0, dtype=np.float32)
    if world > 1:
        import torch.distributed as dist

        gathered: list[tuple[np.ndarray, np.ndarray] | None] = [None] * world
        dist.all_gather_object(gathered, (rows_np, probs_np))
        rows_np = np.concatenate([g[0] for g in gathered if g is not None])
        probs_np = np.concatenate([g[1] for g in gathered if g is not None])
    probs = np.zeros(len(frames), dtype=np.float64)
    probs[rows_np] = probs_np
    filled = np.zeros(len(frames), dtype=bool)
    filled[rows_np] = True
    missing = int((~filled).sum())
    if missing:
        raise QuadvaultError(f"validation skipped {missing} of {len(frames)} frames (pipeline bug)")
    if not np.isfinite(probs).all():
        raise QuadvaultError("the model's outputs became NaN: training diverged",
                             hint="train again with a lower --learning-rate")
    p = np.clip(probs, 1e-7, 1 - 1e-7)
    y = frames.labels
    loss = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    return probs, loss


def _score(probs: np.ndarray, frames: FrameTable) -> tuple[dict, dict, float]:
    """(frame metrics, video metrics, threshold): the threshold is tuned on the videos and, as in ``evaluate``,
    frames are judged at it too."""
    _, vscores, vlabels = video_scores(probs, frames.labels, frames.video_ids)
    threshold = best_threshold(vscores, vlabels)
    frame = binary_metrics(probs, frames.labels, threshold).as_dict()
    video = binary_metrics(vscores, vlabels, threshold).as_dict()
    video["accuracy_at_0.5"] = binary_metrics(vscores, vlabels, 0.5).accuracy
    return frame, video, threshold


def _selection_key(video: dict[str, Any], val_loss: float) -> tuple[float, float, float]:
    """How epochs are ranked: video-level balanced accuracy (a rare class counts as much as a common one), then
    ROC-AUC, then lower validation loss (a model at 100 % goes on while its loss falls). Records saved before
    balanced accuracy was kept are ranked from their confusion counts."""
    balanced = video.get("balanced_accuracy")
    if balanced is None:
        balanced = balanced_accuracy(video["tp"], video["fp"], video["tn"], video["fn"])
    return (float(balanced), float(video.get("roc_auc") or 0.0), -float(val_loss))


def _write_json(path: Path, data: object) -> None:
    with atomic_path(Path(path)) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, default=float)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def run_training(config: TrainConfig, report: Report, *, rank: int = 0, world: int = 1,
                 local_rank: int = 0) -> TrainResult:
    """Trains on ``config.dataset`` and writes the best model to ``config.output_dir``."""
    prepare_output_dir(config.output_dir)
    backend = resolve_device(config.device)
    if world > 1 and backend != "gpu":
        raise BackendUnavailableError("--multi-gpu needs CUDA GPUs", hint="drop --multi-gpu")
    device = torch.device(f"cuda:{local_rank}") if backend == "gpu" else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        return _run(config, report if rank == 0 else (lambda _: None), backend, device, rank, world, local_rank)
    except torch.cuda.OutOfMemoryError:
        raise QuadvaultError(f"CUDA ran out of memory at --batch-size {config.batch_size} and --image-size "
                             f"{config.image_size}",
                             hint=f"try --batch-size {max(2, config.batch_size // 2)}") from None


def _run(config: TrainConfig, report: Report, backend: str, device: torch.device, rank: int, world: int,
         local_rank: int) -> TrainResult:
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    data: TrainingData = load_training_data(config.dataset)
    for file, why in data.train.skipped + data.val.skipped + data.test.skipped:
        report(f"⚠ Skipped frame {file}: {why}")
    if str(config.pretrained) == "none" and config.freeze_backbone_epochs:
        log.warning("--freeze-backbone-epochs %d with --pretrained none: the head first learns from a random, "
                    "frozen backbone (its BatchNorm statistics untrained too); freezing helps pretrained weights "
                    "only", config.freeze_backbone_epochs)
    frame_size = data.settings.get("size")
    if isinstance(frame_size, int) and config.image_size > frame_size:
        # scans sample at the model's size and shrink; training would enlarge these frames: blurrier than scored
        log.warning("the dataset's frames are %d px on their short side, smaller than --image-size %d: the model "
                    "would train on enlarged, blurrier frames than it scores later (prepare the dataset again with "
                    "--size %d or more, or train with --image-size %d or less)", frame_size, config.image_size,
                    config.image_size, frame_size)
    arch, note = resolve_backbone(config.backbone, config.pretrained)
    if note:
        report(note)
    spec = spec_for(arch)
    settings = run_settings(config, arch, data.fingerprint, world, data.settings)
    if rank == 0:
        remove_dead_temporaries(config.output_dir)  # a killed run's (a 40-MB state's, say)
    saved = load_saved(config.output_dir, settings) if config.resume else None
    epochs_done = saved.epochs_done if saved is not None else 0
    net = build_network(arch, image_size=config.image_size, pretrained=config.pretrained).to(device)
    net = net.to(memory_format=torch.channels_last)  # NHWC: faster convolutions on GPUs and on CPUs (oneDNN)
    model: nn.Module = net
    if world > 1:
        model = nn.parallel.DistributedDataParallel(net, device_ids=[local_rank])
    common = dict(image_size=config.image_size, mean=spec.mean, std=spec.std, batch_size=config.batch_size,
                  backend=backend, device_id=local_rank, shard_id=rank, num_shards=world,
                  num_threads=loader_threads(config.num_threads, int(os.environ.get("LOCAL_WORLD_SIZE", world))))
    if world > 1 and len(data.train) < 2 * world:
        raise DatasetError(f"{len(data.train)} training frames cannot feed {world} GPUs (each needs at least 2 per "
                           "batch for BatchNorm)", path=config.dataset, hint="train on one GPU, or label more clips")
    # resumed: the loader goes on exactly where the run left it (one GPU: rank 0 saves its own loader only);
    # without its checkpoint, the resumed epochs get an order of their own, not epoch 1's again
    restored = saved.loader_checkpoint if saved is not None and world == 1 else None
    # the seed the saved loader was built with: a run that itself resumed without a checkpoint used its own
    built_with = config.seed if saved is None or saved.loader_seed is None else saved.loader_seed
    loader_seed = built_with if restored else resume_seed(config.seed, epochs_done)
    try:
        train_loader = DaliFrameLoader(data.train, train=True, seed=loader_seed, checkpoint=restored, **common)
    except LoaderCheckpointError as exc:
        log.warning("%s; the resumed epochs see the frames in an order of their own", exc)
        loader_seed = resume_seed(config.seed, epochs_done)
        train_loader = DaliFrameLoader(data.train, train=True, seed=loader_seed, **common)
    val_loader = DaliFrameLoader(data.val, train=False, seed=loader_seed, **common)

    steps_per_epoch = max(1, len(train_loader))
    total = steps_per_epoch * config.epochs
    warmup = min(total // 2, max(1, int(config.warmup_epochs * steps_per_epoch)))
    frozen_steps = config.freeze_backbone_epochs * steps_per_epoch
    optimizer = torch.optim.AdamW([
        {"params": net.backbone.parameters(), "lr": config.learning_rate},
        {"params": net.head.parameters(), "lr": config.learning_rate * config.head_lr_multiplier},
    ], weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, [_lr_lambda(total, warmup, frozen_steps), _lr_lambda(total, warmup)])
    # frames weighted by their video's length, and the classes balanced by those weights
    weights = video_balance_weights(data.train.video_ids)
    positive = float(weights[data.train.labels == 1].sum())
    pos_weight = torch.tensor((float(weights.sum()) - positive) / max(positive, 1e-9), device=device)
    step = TrainStep(model, optimizer, scheduler, torch.from_numpy(data.train.labels), pos_weight, device,
                     frame_weights=torch.from_numpy(weights))
    if saved is not None:
        position = restore(saved, net, optimizer, scheduler)
        del saved  # the tensors are in the network and optimizer now
        if rank == 0:
            _check_best_model(config, net, arch, data, position, report)
    else:
        position = RunPosition(run_id=uuid.uuid4().hex)
        if rank == 0:
            remove_state(config.output_dir)  # an earlier run's (--overwrite): it must not be resumed into this one
    run_id = position.run_id

    weights = {"auto": "ImageNet weights", "none": "from scratch"}.get(str(config.pretrained),
                                                                     f"weights from {config.pretrained}")
    report(f"Training {arch} ({weights}) on {backend}: {len(data.train):,} train frames "
           f"({data.train.n_videos} videos), {len(data.val):,} val frames ({data.val.n_videos} videos), "
           f"{config.image_size}px, batch {config.batch_size}" + (f" x {world} GPUs" if world > 1 else ""))
    if position.stopped_early:
        report(f"The interrupted run had already stopped early after epoch {position.epoch} (no better "
               f"epoch for {config.patience} epochs); nothing left to train")
    elif position.epoch:
        report(f"Resuming the interrupted run after epoch {position.epoch} of {config.epochs} (best so far: "
               f"epoch {position.best_epoch}, video-level val accuracy {_pct(position.best_video_accuracy)})")
    result = TrainResult(config.output_dir, arch, position.best_epoch, position.best_video_accuracy,
                         position.threshold, history=position.history, stopped_early=position.stopped_early,
                         skipped_frames=data.train.skipped + data.val.skipped + data.test.skipped)
    # ranked again by this version's key: a state saved by an older version ranked its epochs otherwise
    best_key = (_selection_key(position.history[position.best_epoch - 1].video,
                               position.history[position.best_epoch - 1].val_loss)
                if position.best_epoch and len(position.history) >= position.best_epoch else position.best_key)
    since_best = position.since_best
    show = rank == 0
    for epoch in range(position.epoch + 1, 1 if result.stopped_early else config.epochs + 1):
        frozen = epoch <= config.freeze_backbone_epochs
        report(f"\nEpoch {epoch}/{config.epochs}" + (" (backbone frozen)" if frozen else ""))
        started = time.perf_counter()
        model.train()
        _set_backbone_frozen(net, frozen, world > 1)
        if str(config.pretrained) != "none":
            _hold_batchnorm_statistics(net)
        train_loss, train_acc, seen = _train_epoch(step, train_loader, f"Train {epoch}", show)
        train_s = time.perf_counter() - started
        # the bare network: DDP's forward syncs buffers, and ranks may hold different numbers of val batches;
        # on the step's stream, whose cached memory it reuses (a second stream would cache its own peak)
        with step.running():
            probs, val_loss = frame_probabilities(net, val_loader, data.val, device, world, f"Val {epoch}", show)
        frame, video, threshold = _score(probs, data.val)
        record = EpochRecord(epoch, train_loss, train_acc, val_loss, frame, video, threshold,
                             time.perf_counter() - started, seen * world / max(train_s, 1e-9))
        result.history.append(record)
        report(f"Train Loss: {train_loss:.4f} | Train Acc: {_pct(train_acc)}")
        # the threshold is tuned on these same videos: say what 0.5 gives too (a few videos flatter the tuned one)
        report(f"Val Loss: {val_loss:.4f} | Val Acc: {_pct(frame['accuracy'])} | Video Acc: "
               f"{_pct(video['accuracy'])} (balanced {_pct(video['balanced_accuracy'])}) at threshold {threshold:.2f} ({_pct(video['accuracy_at_0.5'])} at 0.50)"
               f" | Video F1: {video['f1']:.3f} | Video AUC: "
               + (f"{video['roc_auc']:.3f}" if video["roc_auc"] is not None else "n/a"))
        key = _selection_key(video, val_loss)
        improved = best_key is None or key > best_key
        if improved:
            best_key, since_best = key, 0
            result.best_epoch, result.best_video_accuracy, result.threshold = epoch, video["accuracy"], threshold
        elif not frozen:  # a plateau of the head alone must not end the run before the backbone trains
            since_best += 1
            if since_best >= config.patience:
                result.stopped_early = True
        if rank == 0:  # every epoch: Ctrl-C or a divergence later still leaves the history so far
            _write_json(config.output_dir / HISTORY_FILE, [asdict(r) for r in result.history])
            # then where the run stands, for --resume, and only then the best model: a kill between the two
            # leaves a state whose weights are that best model, which --resume saves again (saved first, the
            # model was an epoch the resumed run then ran again, and its history named another best)
            try:
                save_state(config.output_dir, net, optimizer, scheduler, settings, RunPosition(
                    epoch, best_key, since_best, result.best_epoch, result.best_video_accuracy, result.threshold,
                    result.history, result.stopped_early, run_id),
                    loader_checkpoint=train_loader.checkpoint() if world == 1 else None, loader_seed=loader_seed)
            except OutputError as exc:  # a full disk: the state is ~3x the model; training itself goes on
                remove_state(config.output_dir)  # an older epoch's state would no longer match the model here
                log.warning("%s; training goes on, but --resume cannot continue this run", exc)
            if improved:
                _save(config, net, arch, data, record, run_id)
        if improved:
            report(f"✓ Saved best model (video-level val balanced accuracy {_pct(video['balanced_accuracy'])})")
        if result.stopped_early:
            report(f"Early stop: no better epoch (video-level val balanced accuracy, then ROC-AUC, then loss) "
                   f"for {config.patience} epochs")
            break
    if world > 1:
        import torch.distributed as dist

        dist.barrier()  # rank 0 has written the best model and its card: every rank reads the same
    ours = bool(result.best_epoch) and _saved_model_of(config.output_dir) == (run_id, result.best_epoch)
    if result.best_epoch and not ours:
        log.warning("%s: the model there is not this run's best epoch %d: no test measurement recorded into it",
                    config.output_dir, result.best_epoch)
    if len(data.test) and ours:  # before the state goes: a stop here measures again on --resume
        result.test = _measure_test(config, net, data, result.threshold, common, device, world, show)
    if rank == 0 and ours:
        _record_outcome(config.output_dir, result)
    if rank == 0:
        remove_state(config.output_dir)  # finished: nothing to resume
    _final_block(report, result)
    return result


def _measure_test(config: TrainConfig, net: nn.Module, data: TrainingData, threshold: float, common: dict,
                  device: torch.device, world: int, show: bool) -> dict[str, Any]:
    """The saved best model's metrics on the held-out test videos, at the threshold validation chose: the
    numbers the model earned on videos that chose nothing (``dataset._split``)."""
    from safetensors.torch import load_file

    from ..model import WEIGHTS_FILE

    net.load_state_dict(load_file(str(config.output_dir / WEIGHTS_FILE), device=str(device)))
    loader = DaliFrameLoader(data.test, train=False, seed=config.seed, **common)
    probs, _ = frame_probabilities(net, loader, data.test, device, world, "Test", show)
    _, vscores, vlabels = video_scores(probs, data.test.labels, data.test.video_ids)
    return {"frame": binary_metrics(probs, data.test.labels, threshold).as_dict(),
            "video": binary_metrics(vscores, vlabels, threshold).as_dict(),
            "test_frames": len(data.test), "test_videos": data.test.n_videos}


def _record_outcome(model_dir: Path, result: TrainResult) -> None:
    """Adds how the run ended (epochs run, early stop) and the test metrics to the saved model's card (they
    change nothing the model scores with)."""
    card_path = model_dir / CARD_FILE
    card = json.loads(card_path.read_text(encoding="utf-8"))
    card.setdefault("training", {}).update({"epochs_run": len(result.history), "stopped_early": result.stopped_early})
    if result.test is not None:
        card.setdefault("metrics", {})["test"] = result.test
    with atomic_path(card_path) as tmp:
        tmp.write_text(json.dumps(card, indent=2, sort_keys=True, default=float) + "\n", encoding="utf-8")


def _save(config: TrainConfig, net: nn.Module, arch: str, data: TrainingData, record: EpochRecord,
          run_id: str) -> None:
    from ..pipelines.training import training_augmentation  # DALI: imported where training runs, as the loader's

    card = {"name": config.output_dir.name, "architecture": arch, "image_size": config.image_size,
            "threshold": record.threshold,
            "metrics": {"epoch": record.epoch, "frame": record.frame, "video": record.video,
                        "val_loss": record.val_loss, "train_loss": record.train_loss,
                        "val_frames": len(data.val), "val_videos": data.val.n_videos,
                        "train_frames": len(data.train), "train_videos": data.train.n_videos},
            "dataset_fingerprint": data.fingerprint, "dataset": Path(config.dataset).resolve().name,  # not its path: a shared card showed the home folder
            # the content ids of each split's videos as trained: evaluate names the videos a model has seen even
            # after prepare-dataset --merge added some to the dataset (or the dataset is on another machine)
            "split_videos": {"train": sorted(set(data.train.video_ids)), "val": sorted(set(data.val.video_ids)),
                             "test": sorted(set(data.test.video_ids))},
            # how the frames were prepared and the model trained, for whoever is given it (an ML review found
            # the prepare settings, augmentation and schedule kept only in the state a finished run deletes)
            "dataset_settings": dict(data.settings),
            "training": {"pretrained": pretrained_label(str(config.pretrained)), "device": str(resolve_device(config.device)),
                         "epochs": config.epochs,
                         "batch_size": config.batch_size, "learning_rate": config.learning_rate,
                         "weight_decay": config.weight_decay, "head_lr_multiplier": config.head_lr_multiplier,
                         "warmup_epochs": config.warmup_epochs, "patience": config.patience,
                         "seed": config.seed, "freeze_backbone_epochs": config.freeze_backbone_epochs,
                         "loss_weighting": LOSS_WEIGHTING,
                         "augmentation": training_augmentation(), "run_id": run_id}}
    save_model(config.output_dir, net, card)


def _saved_model_of(model_dir: Path) -> tuple[str | None, int | None]:
    """(run id, epoch) of the model saved in ``model_dir``, from its card; (None, None) without one."""
    try:
        card = json.loads((model_dir / CARD_FILE).read_text(encoding="utf-8"))
        return card["training"].get("run_id"), card["metrics"]["epoch"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None, None


def _check_best_model(config: TrainConfig, net: nn.Module, arch: str, data: TrainingData, position: RunPosition,
                      report: Report) -> None:
    """Where the interrupted run was killed after saving its state but before saving that epoch's best model,
    the state's weights are that model: it is saved again, so the folder's model is the run's best epoch."""
    saved = _saved_model_of(config.output_dir)
    if saved == (position.run_id, position.best_epoch) or not position.best_epoch:
        return
    if position.best_epoch == position.epoch:
        _save(config, net, arch, data, position.history[-1], position.run_id)
        report(f"✓ Saved the best model of epoch {position.epoch} again (the run was stopped while saving it)")
    else:
        log.warning("%s: the model there is not this run's best epoch %d (replaced since?); the next better epoch "
                    "replaces it", config.output_dir, position.best_epoch)


def _final_block(report: Report, result: TrainResult) -> None:
    best = result.history[result.best_epoch - 1] if result.best_epoch else None
    report("\n" + "=" * 60)
    report("TRAINING COMPLETE")
    report("=" * 60)
    if best is not None:
        report(f"Best epoch {result.best_epoch}: video-level val balanced accuracy "
               f"{_pct(_selection_key(best.video, best.val_loss)[0])}, accuracy {_pct(result.best_video_accuracy)} ("
               f"threshold {result.threshold:.2f}, tuned on these {best.video['n']} videos; "
               f"{_pct(best.video['accuracy_at_0.5'])} at 0.50)")
        report(f"Frame-level val accuracy: {_pct(best.frame['accuracy'])} | Video F1: {best.video['f1']:.3f}")
    if result.test is not None:
        video = result.test["video"]
        if not (video["tp"] + video["fn"]) or not (video["tn"] + video["fp"]):  # --merge or relabels left one class
            report(f"Held-out test: its {video['n']} videos are all of one class (accuracy {_pct(video['accuracy'])}); "
                   "label more of the other, or prepare the dataset again with --overwrite")
        else:
            report(f"Held-out test, {video['n']} videos used for nothing else: balanced accuracy "
                   f"{_pct(video['balanced_accuracy'])}, accuracy {_pct(video['accuracy'])}, F1 {video['f1']:.3f} at "
                   f"threshold {result.threshold:.2f}: what to expect on new footage (scan and test-video decode "
                   f"the videos themselves, so their scores can differ from the stored frames' by about 0.02)")
    elif best is not None:
        report("No test split (prepare-dataset holds one out when every class has 10+ videos): the val numbers "
               "above chose the epoch and threshold, so expect less on new footage")
    report(f"Model saved to: {result.model_dir}")
    report("=" * 60)
