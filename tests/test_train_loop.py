"""The training loop's policies on the CPU: learning-rate schedule, BatchNorm from scratch, early stopping
with a frozen backbone, the output folder and the per-epoch history."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from test_train import BACKENDS, make_dataset  # the shared synthetic two-style dataset (tests/ is on sys.path)

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
    monkeypatch.setattr(loop, "frame_probabilities", _plateau)
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
    real = loop.frame_probabilities
    calls = []

    def diverge_in_epoch_2(*args: object) -> tuple[np.ndarray, float]:
        calls.append(1)
        if len(calls) == 2:
            raise QuadvaultError("the model's outputs became NaN: training diverged")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "frame_probabilities", diverge_in_epoch_2)
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


def _resumable(tmp_path: Path, **changes: object) -> TrainConfig:
    settings = dict(epochs=3, batch_size=4, image_size=64, device="cpu", backbone="efficientnet-lite0",
                    pretrained="auto", seed=0)
    settings.update(changes)
    return TrainConfig(tmp_path / "ds", tmp_path / "model", **settings)  # type: ignore[arg-type]


def _interrupt_at(epoch: int, lines: list[str]) -> "Callable[[str], None]":
    def report(line: str) -> None:  # Ctrl-C as the epoch starts: every earlier epoch has finished
        lines.append(line)
        if line.strip().startswith(f"Epoch {epoch}/"):
            raise KeyboardInterrupt
    return report


def _saved_state(model_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    from safetensors.torch import load_file, safe_open

    path = model_dir / "training_state.safetensors"
    with safe_open(str(path), "pt") as handle:
        meta = json.loads(handle.metadata()["state"])
    return load_file(str(path)), meta


@pytest.mark.parametrize("device", BACKENDS)
def test_an_interrupted_run_resumes_after_its_last_finished_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   device: str) -> None:
    """Ctrl-C in epoch 2 of 3 used to keep only the best model: the run had to start again from epoch 1 (hours
    on a CPU). The state saved after each epoch lets --resume go on from the weights, optimizer moments,
    schedule and history it had; it goes when the run finishes."""
    make_dataset(tmp_path / "ds", n_videos=6, frames=2)  # 8 training frames: 2 steps of 4 per epoch
    with pytest.raises(KeyboardInterrupt):
        train_model(_resumable(tmp_path, device=device), _interrupt_at(2, []))
    tensors, meta = _saved_state(tmp_path / "model")
    best = load_model(tmp_path / "model").network.state_dict()
    assert meta["position"]["epoch"] == 1 and meta["scheduler"]["last_epoch"] == 2
    assert all(torch.equal(tensors[f"model.{k}"], v.cpu()) for k, v in best.items())  # epoch 1 was the best so far
    assert {float(v) for k, v in tensors.items() if k.endswith(".step")} == {2.0}
    first_epoch = meta["position"]["history"][0]

    real = loop._train_epoch
    weights_at_start: list[dict[str, torch.Tensor]] = []

    def record(step: object, *args: object) -> object:
        weights_at_start.append({k: v.clone() for k, v in step.model.state_dict().items()})  # type: ignore[attr-defined]
        return real(step, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "_train_epoch", record)
    lines: list[str] = []
    with pytest.raises(KeyboardInterrupt):  # the resumed run, stopped again as epoch 3 starts
        train_model(_resumable(tmp_path, device=device, resume=True), _interrupt_at(3, lines))
    assert any("Resuming the interrupted run after epoch 1 of 3" in line for line in lines)
    assert [line.strip() for line in lines if line.strip().startswith("Epoch ")] == ["Epoch 2/3", "Epoch 3/3"]
    assert all(torch.equal(weights_at_start[0][k].cpu(), tensors[f"model.{k}"]) for k in best)  # went on from there
    tensors, meta = _saved_state(tmp_path / "model")
    assert meta["position"]["epoch"] == 2 and meta["scheduler"]["last_epoch"] == 4  # the schedule went on too
    assert {float(v) for k, v in tensors.items() if k.endswith(".step")} == {4.0}
    assert meta["position"]["history"][0] == first_epoch and len(meta["position"]["history"]) == 2

    result = train_model(_resumable(tmp_path, device=device, resume=True), lambda line: None)
    assert [r.epoch for r in result.history] == [1, 2, 3]
    history = json.loads((tmp_path / "model" / loop.HISTORY_FILE).read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3] and history[0] == first_epoch
    assert not (tmp_path / "model" / "training_state.safetensors").exists()  # finished: nothing to resume
    with pytest.raises(OutputError, match="nothing to resume"):
        train_model(_resumable(tmp_path, device=device, resume=True), lambda line: None)


def test_a_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """--resume continues exactly: weights, optimizer, schedule and random generators were restored, but the
    loader was rebuilt with another seed, so the resumed epochs saw other frame orders and augmentations (a
    reviewer's find). With the loader's checkpoint in the state, run + Ctrl-C + --resume is the same run."""
    import dataclasses

    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    straight = train_model(dataclasses.replace(_resumable(tmp_path), output_dir=tmp_path / "straight"),
                           lambda line: None)
    with pytest.raises(KeyboardInterrupt):
        train_model(_resumable(tmp_path), _interrupt_at(2, []))
    assert _saved_state(tmp_path / "model")[1]["loader_checkpoint"]
    with caplog.at_level("WARNING"):  # scoring with the unfinished run's best epoch is allowed, and said
        load_model(tmp_path / "model")
    assert "holds the best epoch so far of an unfinished training run (stopped after epoch 1 of 3)" in caplog.text
    assert f"--output-dir {tmp_path / 'model'} --resume" in caplog.text
    caplog.clear()
    resumed = train_model(_resumable(tmp_path, resume=True), lambda line: None)
    assert [(r.train_loss, r.val_loss) for r in resumed.history] == [(r.train_loss, r.val_loss)
                                                                     for r in straight.history]
    with caplog.at_level("WARNING"):
        mine, theirs = (load_model(folder).network.state_dict() for folder in (tmp_path / "model",
                                                                               tmp_path / "straight"))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert "unfinished" not in caplog.text  # finished: the state is gone


def test_a_checkpoint_from_a_run_that_resumed_without_one_restores_into_its_own_loader(tmp_path: Path) -> None:
    """A run resumed from a state without the loader's checkpoint (an older version's) builds its loader from a
    seed of its own; the checkpoint it then saves only restores into a loader built from that seed (a reviewer's
    find: it was rebuilt from --seed, and the order silently differed)."""
    import dataclasses
    import shutil

    from safetensors.torch import load_file, save_file

    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    with pytest.raises(KeyboardInterrupt):
        train_model(_resumable(tmp_path), _interrupt_at(2, []))
    state = tmp_path / "model" / "training_state.safetensors"
    tensors, meta = _saved_state(tmp_path / "model")
    meta.pop("loader_checkpoint"), meta.pop("loader_seed")  # as an older version saved it
    save_file(load_file(str(state)), str(state), metadata={"state": json.dumps(meta)})
    shutil.copytree(tmp_path / "model", tmp_path / "straight")
    straight = train_model(dataclasses.replace(_resumable(tmp_path, resume=True), output_dir=tmp_path / "straight"),
                           lambda line: None)
    with pytest.raises(KeyboardInterrupt):  # resumed without a checkpoint, stopped again after epoch 2
        train_model(_resumable(tmp_path, resume=True), _interrupt_at(3, []))
    assert _saved_state(tmp_path / "model")[1]["loader_seed"] not in (None, 0)
    resumed = train_model(_resumable(tmp_path, resume=True), lambda line: None)
    assert [r.train_loss for r in resumed.history] == [r.train_loss for r in straight.history]
    mine, theirs = (load_model(folder).network.state_dict() for folder in (tmp_path / "model", tmp_path / "straight"))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_resume_refuses_other_settings_and_a_damaged_state(tmp_path: Path) -> None:
    """A resumed run with another learning rate or size would be another run, silently; a damaged state file
    says so (nothing in it is unpickled)."""
    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    with pytest.raises(KeyboardInterrupt):
        train_model(_resumable(tmp_path), _interrupt_at(2, []))
    with pytest.raises(OutputError, match=r"other settings: --image-size \(64 then, 96 now\); "
                                          r"--learning-rate \(0.0001 then, 0.001 now\)"):
        train_model(_resumable(tmp_path, resume=True, learning_rate=1e-3, image_size=96), lambda line: None)
    state = tmp_path / "model" / "training_state.safetensors"
    # a state saved before frames were weighted by their video's length would switch the loss mid-run (a reviewer)
    from safetensors.torch import load_file, save_file

    tensors, meta = _saved_state(tmp_path / "model")
    meta["settings"].pop("loss_weighting")
    save_file(tensors, str(state), metadata={"state": json.dumps(meta)})
    with pytest.raises(OutputError, match=r"other settings: the loss weighting \(a version since weights frames"):
        train_model(_resumable(tmp_path, resume=True), lambda line: None)
    assert load_file(str(state))  # refused, not changed
    state.write_bytes(state.read_bytes()[:5000])
    with pytest.raises(OutputError, match="saved training state cannot be read"):
        train_model(_resumable(tmp_path, resume=True), lambda line: None)


def test_cli_points_to_resume_for_an_interrupted_run(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from quadvault_dali.cli.main import main

    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    with pytest.raises(KeyboardInterrupt):
        train_model(_resumable(tmp_path), _interrupt_at(2, []))
    args = ["train", str(tmp_path / "ds"), "--output-dir", str(tmp_path / "model")]
    res = CliRunner().invoke(main, args)
    assert res.exit_code != 0 and "interrupted training run is here (stopped after epoch 1 of 3)" in res.output
    assert "--resume to continue it" in res.output
    res = CliRunner().invoke(main, [*args, "--resume", "--overwrite"])
    assert res.exit_code != 0 and "give one of them" in res.output


def test_a_kill_between_the_state_and_the_best_model_is_mended_by_resume(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The best model was saved before the state: killed between the two, --resume ran that epoch again, and the
    folder kept the killed run's model while the history named another best epoch. The state is saved first
    now; killed before the model, --resume saves the state's weights (that epoch's) as the best model."""
    steps = iter([0.5, 0.4, 0.3, 0.2])

    def improving(model: object, loader: object, frames: FrameTable, *args: object) -> tuple[np.ndarray, float]:
        return np.where(frames.labels == 1, 0.6, 0.4), next(steps)  # a lower val loss each epoch: each is best

    real_save = loop._save

    def killed_in_epoch_2(config: object, net: object, arch: str, data: object, record: object, run_id: str) -> None:
        if record.epoch == 2:  # type: ignore[attr-defined]
            raise KeyboardInterrupt
        real_save(config, net, arch, data, record, run_id)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "frame_probabilities", improving)
    monkeypatch.setattr(loop, "_save", killed_in_epoch_2)
    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    with pytest.raises(KeyboardInterrupt):
        train_model(_resumable(tmp_path, epochs=2), lambda line: None)
    assert load_model(tmp_path / "model").card["metrics"]["epoch"] == 1
    tensors, meta = _saved_state(tmp_path / "model")
    assert meta["position"]["epoch"] == meta["position"]["best_epoch"] == 2

    monkeypatch.setattr(loop, "_save", real_save)
    lines: list[str] = []
    result = train_model(_resumable(tmp_path, epochs=2, resume=True), lines.append)
    assert any("Saved the best model of epoch 2 again" in line for line in lines)
    model = load_model(tmp_path / "model")
    assert model.card["metrics"]["epoch"] == result.best_epoch == 2
    assert model.card["training"]["run_id"] == meta["position"]["run_id"]
    assert all(torch.equal(v.cpu(), tensors[f"model.{k}"]) for k, v in model.network.state_dict().items())


def test_a_state_that_cannot_be_saved_never_costs_the_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """A full disk took the state (~3x the model) first and ended the run with no model at all, saying the best
    model was kept. Now training goes on and saves its best models; the older state goes (it would no longer
    match the model), so --resume cannot pick a stale one."""
    from quadvault_dali.errors import OutputError as Full

    steps = iter([0.5, 0.4, 0.3])
    monkeypatch.setattr(loop, "frame_probabilities", lambda model, loader, frames, *a: (
        np.where(frames.labels == 1, 0.6, 0.4), next(steps)))
    real_state = loop.save_state
    calls: list[int] = []

    def full_after_the_first(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) > 1:
            raise Full("cannot save the training state ([Errno 28] No space left on device)")
        real_state(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop, "save_state", full_after_the_first)
    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        train_model(_resumable(tmp_path), _interrupt_at(3, []))
    assert "No space left on device); training goes on, but --resume cannot continue this run" in caplog.text
    assert load_model(tmp_path / "model").card["metrics"]["epoch"] == 2  # epoch 2's model despite its state
    assert not (tmp_path / "model" / "training_state.safetensors").exists()


def test_a_damaged_state_and_a_changed_dataset_are_refused(tmp_path: Path) -> None:
    """5 MB zeroed in a state's middle resumed silently (safetensors checks its header only), and a dataset
    rebuilt at another size (the same frame names) was resumed into."""
    import pyarrow.parquet as pq

    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    with pytest.raises(KeyboardInterrupt):
        train_model(_resumable(tmp_path), _interrupt_at(2, []))
    state = tmp_path / "model" / "training_state.safetensors"
    kept = state.read_bytes()
    damaged = bytearray(kept)
    damaged[len(kept) // 2: len(kept) // 2 + 4096] = bytes(4096)
    state.write_bytes(bytes(damaged))
    with pytest.raises(OutputError, match="do not match their checksum: the file is damaged"):
        train_model(_resumable(tmp_path, resume=True), lambda line: None)
    state.write_bytes(kept)
    table = pq.read_table(tmp_path / "ds" / "dataset.parquet")
    pq.write_table(table.replace_schema_metadata({b"quadvault.dataset": b'{"size": 48}'}),
                   tmp_path / "ds" / "dataset.parquet")
    with pytest.raises(OutputError, match="the dataset changed since the interrupted run started: the dataset's "
                                          "prepare-dataset settings"):
        train_model(_resumable(tmp_path, resume=True), lambda line: None)


def test_a_killed_runs_temporary_files_are_removed(tmp_path: Path) -> None:
    """A state save killed midway left a hidden 20-40 MB temporary for good; a live process's is kept."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    model = tmp_path / "model"
    model.mkdir()
    stale = model / f".training_state.safetensors.{gone.stdout.strip()}-1.tmp"
    live = model / f".model.json.{os.getpid()}-1.tmp"
    stale.write_bytes(b"x" * 1000)
    live.write_bytes(b"{}")
    train_model(_resumable(tmp_path, epochs=1), lambda line: None)
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_cli_sigterm_stops_like_ctrl_c_and_says_how_to_resume(tmp_path: Path, sig: str) -> None:
    """A scheduler's SIGTERM killed the run where it stood (a state save's temporary stayed behind) and Ctrl-C
    said only "Aborted!"; both now stop cleanly and name the epoch --resume continues after, as does a closed
    terminal's SIGHUP. A state with no model yet (killed before epoch 1's model) still stops a plain re-run from
    deleting it."""
    import signal as signals
    import subprocess
    import sys

    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    args = [sys.executable, "-m", "quadvault_dali", "train", str(tmp_path / "ds"), "--output-dir",
            str(tmp_path / "model"), "--epochs", "3", "--batch-size", "4", "--image-size", "64",
            "--backbone", "efficientnet-lite0", "--device", "cpu"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("Epoch 2/"):
            proc.send_signal(getattr(signals, sig))
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + getattr(signals, sig), err
    assert f"Stopped ({sig}); run the same command with --resume to continue after epoch 1 of 3" in err
    assert [p.name for p in (tmp_path / "model").iterdir() if p.name.startswith(".")] == []
    (tmp_path / "model" / "model.json").unlink()
    again = subprocess.run(args, capture_output=True, text=True)
    assert again.returncode != 0 and "an interrupted training run is here" in again.stderr + again.stdout
    assert (tmp_path / "model" / "training_state.safetensors").exists()


def test_epochs_are_ranked_by_balanced_accuracy_also_in_states_saved_before_it_was_kept() -> None:
    """A training state saved by a version that ranked epochs by plain accuracy holds video metrics without
    ``balanced_accuracy``: resuming ranks them from their confusion counts, so old and new epochs compare alike."""
    from quadvault_dali.training._loop import _selection_key

    old = {"accuracy": 0.94, "roc_auc": 0.9, "tp": 0, "fn": 2, "tn": 31, "fp": 0}
    new = {"accuracy": 0.91, "balanced_accuracy": (1 + 28 / 31) / 2, "roc_auc": 0.9, "tp": 2, "fn": 0, "tn": 28,
           "fp": 3}
    assert _selection_key(old, 0.3) == (0.5, 0.9, -0.3)
    assert _selection_key(new, 0.4) > _selection_key(old, 0.3)
    assert _selection_key({**new, "roc_auc": None}, 0.2) < _selection_key(new, 0.4)


def test_a_model_larger_than_the_datasets_frames_is_warned_about(tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """Frames prepared at 48 px and --image-size 64: training would enlarge every frame (blurrier than a scan, which
    samples at the model's size, ever shows it). Said before the first epoch."""
    import pyarrow.parquet as pq

    from quadvault_dali.dataset._table import write_dataset

    make_dataset(tmp_path / "ds", n_videos=6, frames=2)
    rows = pq.read_table(tmp_path / "ds" / "dataset.parquet").to_pylist()
    write_dataset(tmp_path / "ds", rows, {"fps": 1.0, "size": 48, "mode": "auto", "jpeg_quality": 90})
    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        train_model(_resumable(tmp_path), _interrupt_at(1, []))
    assert ("the dataset's frames are 48 px on their short side, smaller than --image-size 64" in caplog.text
            and "--size 64 or more" in caplog.text)
    caplog.clear()
    write_dataset(tmp_path / "ds", rows, {"fps": 1.0, "size": 64, "mode": "auto", "jpeg_quality": 90})
    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        train_model(_resumable(tmp_path), _interrupt_at(1, []))
    assert "smaller than --image-size" not in caplog.text
