"""One optimiser step per batch, with the GPU never waiting for Python.

Two habits of a plain training loop stall a GPU between steps, and this module avoids both:

* Reading the loss back (``float(loss)``, ``int(correct)``) waits until the step has run, so the next
  batch's kernels are queued only after the GPU went idle. The sums stay on the device here and are read
  when the progress bar shows them (every ``SHOW_EVERY`` batches) and at the end of the epoch.
* Copying a batch's row ids from ordinary (pageable) memory makes CUDA synchronise the stream first; they
  go through pinned memory instead.

On CUDA the step runs on a high-priority stream, so the GPU runs DALI's augmentation kernels in the gaps of
the model's instead of beside them (train_bench measured the difference on an H200: 88 % of the model's step
rate against 83 %).

DALI 2.4's executor hands PyTorch its own output buffers (DLPack, no copy: ``DALIGenericIterator`` copies
only without ``exec_dynamic``) and reuses them, in its own stream order, once PyTorch lets go; nothing orders
that after the step stream's read. The host runs ahead of the stream and drops a batch when it takes the
next, so each batch is kept until an event says the stream has gone past its step (``_held``).
"""

from __future__ import annotations

import contextlib
from collections import deque
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ._data import FILLER

#: batches between two reads of the running loss and accuracy (each read waits for the GPU)
SHOW_EVERY = 25


class TrainStep:
    """Runs the training steps; ``totals()`` reads (loss sum, correct, counted frames) back, ``reset()`` zeroes
    them for the next epoch."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None, labels: torch.Tensor,
                 pos_weight: torch.Tensor, device: torch.device, *, priority: bool = True,
                 frame_weights: torch.Tensor | None = None) -> None:
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.device = device
        self.cuda = device.type == "cuda"
        self.labels = labels.float().to(device)  # per frame row, on the device once
        #: each frame row's weight in the loss (``_data.video_balance_weights``); all 1 when not given
        self.frame_weights = (frame_weights.float() if frame_weights is not None
                              else torch.ones(len(labels))).to(device)
        self.pos_weight = pos_weight
        # one stream for the whole run: PyTorch's caching allocator reuses freed memory only on the stream
        # that allocated it, so a new stream per epoch would cache another training peak each epoch
        self.stream = torch.cuda.Stream(device, priority=-1) if self.cuda and priority else None
        self._loss = torch.zeros((), dtype=torch.float64, device=device)
        self._counts = torch.zeros(2, dtype=torch.int64, device=device)  # correct, counted
        #: the batches handed in (DALI's buffers) with an event after the step that read them
        self._held: deque[tuple[torch.cuda.Event, tuple[torch.Tensor, ...]]] = deque()

    def reset(self) -> None:
        """Zeroes the totals (a new epoch), after the steps queued so far."""
        with torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext():
            self._loss.zero_()
            self._counts.zero_()

    @contextlib.contextmanager
    def running(self) -> Iterator["TrainStep"]:
        """The stream the epoch's batches are fetched and stepped on (take the next batch inside it)."""
        if self.stream is None:
            yield self
            return
        self.stream.wait_stream(torch.cuda.current_stream(self.device))
        try:
            with torch.cuda.stream(self.stream):
                yield self
        finally:  # also on an error: whatever runs next on the default stream sees the steps finished
            torch.cuda.current_stream(self.device).wait_stream(self.stream)

    def __call__(self, images: torch.Tensor, rows: torch.Tensor) -> None:
        """One step on ``images`` (N,3,H,W), whose frame rows are ``rows`` (FILLER for batch padding)."""
        batch = (images, rows)  # as handed in: possibly DALI's own buffers (see the module's docstring)
        if self.cuda and rows.device.type == "cpu":
            rows = rows.pin_memory()
        rows = rows.to(self.device, non_blocking=True)
        frame = rows.clamp(min=0)  # a filler's row reads frame 0's label and weight, then counts for nothing
        y = self.labels[frame]
        # fillers complete the batch (BatchNorm sees a full one) but must not count their frame twice
        weight = (rows != FILLER).float() * self.frame_weights[frame]
        images = images.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.cuda):
            logits = self.model(images)
        losses = weight * F.binary_cross_entropy_with_logits(logits.float(), y, pos_weight=self.pos_weight,
                                                             reduction="none")
        loss = losses.sum() / len(weight)  # per batch size, not per counted frame: a frame weighs its weight
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        with torch.no_grad():
            self._loss += losses.detach().sum().double()
            hits = ((logits.detach().float() > 0) == (y > 0.5)) & (weight > 0)
            self._counts += torch.stack((hits.sum(), (weight > 0).sum()))
        self._hold(batch)

    def _hold(self, tensors: tuple[torch.Tensor, ...]) -> None:
        """Keeps ``tensors`` until the current stream has run what was queued so far; lets go of earlier ones
        whose steps have run (a query, never a wait)."""
        if not self.cuda:
            return
        event = torch.cuda.Event()
        event.record(torch.cuda.current_stream(self.device))
        self._held.append((event, tensors))
        while self._held and self._held[0][0].query():
            self._held.popleft()

    def totals(self) -> tuple[float, int, int]:
        """(loss sum, correct, counted frames) so far; waits for the steps queued until now."""
        correct, seen = (int(v) for v in self._counts.tolist())
        return float(self._loss), correct, seen
