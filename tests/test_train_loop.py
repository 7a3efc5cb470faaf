"""The training loop's policies on the CPU: learning-rate schedule, BatchNorm from scratch, early stopping
with a frozen backbone, the output folder and the per-epoch history."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from test_train import make_dataset  # the shared synthetic two-style dataset (tests/ is on sys.path)

import quadvault_dali.training._loop as loop
from quadvault_dali.errors import OutputError, QuadvaultError
from quadvault_dali.model import build_network, load_model
from quadvault_dali.training import FrameTable, TrainConfig, train_model


def test_backbone_warm_up_starts_when_it_is_unfrozen() -> None:
    """20 epochs of 10 steps, a 1-epoch warm-up, backbone frozen for 2: its warm-up used to be spent while
    frozen, so the factor jumped from 0 to 0.99 at the unfreeze step."""
    total, warmup, start = 200, 10, 20
    backbone, head = loop._lr_lambda(total, warmup, start), loop._lr_lambda(total, warmup)
    assert [backbone(s) for s in (0, 19)] == [0.0, 0.0]
    assert [backbone(s) for s in (20, 24, 29)] == pytest.approx([0.1, 0.5, 1.0])
    assert backbone(20 + 10 + 85) == pytest.approx(0.5)  # cosine half-way through its own 170 decay steps
    assert backbone(199) == pytest.approx(0.5 * (1 + math.cos(math.pi * 169 / 170)))  # ends near zero
    # the head, never frozen, keeps the schedule it had
    assert [head(s) for s in (0, 9, 105)] == pytest.approx([0.1, 1.0, 0.5])
    assert loop._lr_lambda(1, 0)(0) == 1.0  # a one-step run trains at full rate


def _batchnorm_statistics(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.cpu() for k, v in net.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def test_from_scratch_batchnorm_learns_its_statistics(tmp_path: Path) -> None:
    """--pretrained none: holding BatchNorm on its initial mean 0 / variance 1 trained a net without any
    normalisation, which learned nothing. From scratch the statistics follow the data."""
    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    config = TrainConfig(tmp_path / "ds", tmp_path / "model", epochs=1, batch_size=4, image_size=64,
                         device="cpu", backbone="efficientnet-lite0", pretrained="none", seed=0)
    train_model(config, lambda line: None)
    initial = _batchnorm_statistics(build_network("efficientnet-lite0", image_size=64, pretrained="none"))
    trained = _batchnorm_statistics(load_model(tmp_path / "model").network)
    assert initial and all(torch.all(v == (0 if k.endswith("mean") else 1)) for k, v in initial.items())
    moved = [k for k, v in initial.items() if not torch.allclose(trained[k], v)]
    assert len(moved) == len(initial), sorted(set(initial) - set(moved))[:5]


def _plateau(model: object, loader: object, frames: FrameTable, *args: object) -> tuple[np.ndarray, float]:
    """Validation stuck at the same scores every epoch: no epoch after the first is better."""
    return np.where(frames.labels == 1, 0.6, 0.4), 0.5


def test_patience_counts_only_epochs_with_the_backbone_trained(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--freeze-backbone-epochs 3 --patience 2 on a plateau: the run stopped in epoch 3, before the backbone
    was ever unfrozen. Now the backbone gets its 2 epochs (4 and 5) before the stop."""
    monkeypatch.setattr(loop, "_evaluate", _plateau)
    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    lines: list[str] = []
    config = TrainConfig(tmp_path / "ds", tmp_path / "model", epochs=10, batch_size=4, image_size=64,
                         device="cpu", backbone="efficientnet-lite0", pretrained="auto", seed=0,
                         freeze_backbone_epochs=3, patience=2)
    result = train_model(config, lines.append)
    assert [r.epoch for r in result.history] == [1, 2, 3, 4, 5] and result.stopped_early
    assert result.best_epoch == 1
    epochs = [line.strip() for line in lines if line.strip().startswith("Epoch ")]
    assert epochs == [f"Epoch {e}/10 (backbone frozen)" for e in (1, 2, 3)] + ["Epoch 4/10", "Epoch 5/10"]
    assert sum("Early stop" in line for line in lines) == 1


def test_output_folder_problems_are_reported_before_any_work(tmp_path: Path) -> None:
    """--output-dir notadir/model with notadir a file failed as a raw NotADirectoryError when the first model
    was saved, after the data had been loaded and checked (the dataset here does not even exist)."""
    from click.testing import CliRunner

    from quadvault_dali.cli.main import main

    blocker = tmp_path / "notadir"
    blocker.write_text("a file")
    for out in (blocker / "model", blocker):
        with pytest.raises(OutputError, match="is a file") as err:
            train_model(TrainConfig(tmp_path / "no-dataset", out, device="cpu"), lambda line: None)
        assert err.value.path == out and str(blocker) in str(err.value)
    result = CliRunner().invoke(main, ["train", str(tmp_path / "no-dataset"), "--output-dir",
                                       str(blocker / "model"), "--device", "cpu"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert f"Error: {blocker / 'model'}: cannot be the model folder: {blocker} is a file" in result.output


def test_history_is_written_after_every_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A divergence (or Ctrl-C) in epoch 2 used to leave no training_history.json: it was written at the end."""
    real = loop._evaluate
    calls = []

    def diverge_in_epoch_2(*args: object) -> tuple[np.ndarray, float]:
        calls.append(1)
        if len(calls) == 2:
            raise QuadvaultError("the model's outputs became NaN: training diverged")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "_evaluate", diverge_in_epoch_2)
    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    config = TrainConfig(tmp_path / "ds", tmp_path / "model", epochs=3, batch_size=4, image_size=64,
                         device="cpu", backbone="efficientnet-lite0", pretrained="auto", seed=0)
    with pytest.raises(QuadvaultError, match="diverged"):
        train_model(config, lambda line: None)
    history = json.loads((tmp_path / "model" / loop.HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [1] and history[0]["train_loss"] > 0
    assert load_model(tmp_path / "model").card["metrics"]["epoch"] == 1  # and epoch 1's model is kept
    assert [p.name for p in (tmp_path / "model").iterdir() if p.name.startswith(".")] == []  # no temp files


def test_loader_threads_follow_the_cores_and_the_ranks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The DALI loader's CPU threads were fixed at 2, an eighth of what the benchmark fed the H200 with."""
    import os

    from quadvault_dali.training._config import MAX_LOADER_THREADS, loader_threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert loader_threads(None) == 16 and loader_threads(None, 4) == 4 and loader_threads(None, 16) == 2
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(96)))
    assert loader_threads(None) == MAX_LOADER_THREADS
    assert loader_threads(3) == 3  # asked for: as asked
    with pytest.raises(QuadvaultError, match="--loader-threads"):
        TrainConfig(Path("ds"), Path("model"), num_threads=0)
