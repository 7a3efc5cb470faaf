"""``--multi-gpu``: one DistributedDataParallel rank per GPU, launched by torchrun or spawned here.

Under ``torchrun`` the ranks come from its environment variables (RANK, WORLD_SIZE, LOCAL_RANK); started
plainly, the command spawns one process per visible GPU itself. Each rank's DALI readers take their
own shard of the frames.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from typing import Any, Callable

import torch

from ..errors import BackendUnavailableError, QuadvaultError
from ._config import TrainConfig, TrainResult
from ._loop import prepare_output_dir, run_training

log = logging.getLogger(__name__)
_echo = functools.partial(print, flush=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _init(rank: int, world: int, local_rank: int) -> None:
    import torch.distributed as dist

    torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, device_id=torch.device(f"cuda:{local_rank}"))


def _train_rank(local_rank: int, world: int, config: TrainConfig, port: int, quiet: bool = False) -> TrainResult:
    import torch.distributed as dist

    from .._gc import freeze_startup_objects
    from ..progress import set_quiet

    set_quiet(quiet)  # a spawned process starts without the parent's -q
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    _init(local_rank, world, local_rank)
    freeze_startup_objects()  # a rank spawned here owns its process (see _gc)
    try:
        return run_training(config, (lambda line: None) if quiet else _echo, rank=local_rank, world=world,
                            local_rank=local_rank)
    finally:
        dist.destroy_process_group()


def _rank_main(rank: int, world: int, target: Callable[..., Any], args: tuple, queue: Any) -> None:
    result = target(rank, world, *args)
    if rank == 0:
        queue.put(result)


def _spawn(target: Callable[..., Any], world: int, args: tuple) -> Any:
    """Runs ``target(rank, world, *args)`` in ``world`` spawned processes; returns rank 0's result.

    The queue is read while the ranks are joined, not after: rank 0's ``put`` blocks until the pipe
    (64 KiB) is drained, so a larger result (a long history, many skipped frames) used to deadlock a
    parent waiting for rank 0 to exit. A rank killed by a signal is a ``QuadvaultError`` naming it.
    """
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    results = []
    try:
        ranks = mp.spawn(_rank_main, args=(world, target, args, queue), nprocs=world, join=False)
        while not ranks.join(timeout=0.5):
            while not queue.empty():
                results.append(queue.get())
    except mp.ProcessRaisedException as exc:
        last = str(exc).strip().splitlines()[-1]
        raise QuadvaultError(f"a training rank failed: {last}") from None
    except mp.ProcessExitedException as exc:
        how = f"was killed by {exc.signal_name}" if exc.signal_name else f"exited with code {exc.exit_code}"
        oom = "SIGKILL is often the out-of-memory killer: try a smaller --batch-size"
        raise QuadvaultError(f"training rank {exc.error_index} (pid {exc.error_pid}) {how}",
                             hint=oom if exc.signal_name == "SIGKILL" else None) from None
    while not queue.empty():
        results.append(queue.get())
    if not results:
        raise QuadvaultError("training ranks finished without a result")
    return results[0]


def _under_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))


def train_model(config: TrainConfig, report: Callable[[str], None] = log.info) -> TrainResult:
    """Trains one model; with ``config.multi_gpu`` on every visible GPU (DDP)."""
    created = not config.output_dir.exists()
    prepare_output_dir(config.output_dir)  # before any rank starts, so the error is not a rank's traceback
    try:
        return _train(config, report)
    except BaseException:
        if created:  # a run that failed before saving anything leaves no empty model folder behind
            with contextlib.suppress(OSError):
                config.output_dir.rmdir()
        raise


def _train(config: TrainConfig, report: Callable[[str], None]) -> TrainResult:
    if not config.multi_gpu:
        return run_training(config, report)
    if not torch.cuda.is_available():
        raise BackendUnavailableError("--multi-gpu asked for, but no CUDA device is visible",
                                      hint="drop --multi-gpu to train on the CPU")
    if config.device == "cpu":
        raise QuadvaultError("--multi-gpu cannot be combined with --device cpu")
    if _under_torchrun():
        import torch.distributed as dist

        rank, world, local_rank = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
        _init(rank, world, local_rank)
        try:
            return run_training(config, report, rank=rank, world=world, local_rank=local_rank)
        finally:
            dist.destroy_process_group()
    world = torch.cuda.device_count()
    if world == 1:
        report("--multi-gpu: only one GPU is visible; training on it alone")
        return run_training(config, report)
    report(f"--multi-gpu: spawning {world} DistributedDataParallel ranks, one per GPU")
    from ..progress import is_quiet

    result: TrainResult = _spawn(_train_rank, world, (config, _free_port(), is_quiet()))
    return result
