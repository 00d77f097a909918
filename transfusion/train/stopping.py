"""When a run stops before its last step: signals, a NaN/Inf loss, a session's step limit.

No host sync per step (issue 18): the training loss is summed on the device (:class:`LossWindow`)
and read, and checked for NaN/Inf, only at train rows (every ``log_every`` steps), evaluations,
checkpoints and the end; a NaN stops the run with one line naming the steps since the last check,
before any checkpoint could hold it. Under DDP the processes agree on a stop signal at those same
points (each agreement is a collective), so a SIGTERM is honoured within ``log_every`` steps.
"""
from __future__ import annotations

import logging
import math
import signal
import threading

import torch

from transfusion.errors import ConfigError
from transfusion.train import distributed as D

log = logging.getLogger(__name__)


class LossWindow:
    """The training loss summed on the device since the last train row, so that a step makes no
    host sync (a ``float(loss)`` per step stalls a GPU's queue). float64 (float32 on devices
    without it, e.g. mps): the same additions, in the same order, as summing Python floats, so
    CPU metrics and exact resume are unchanged. ``checked``: the step of the last NaN/Inf check."""

    def __init__(self, device: torch.device, loss_sum: float = 0.0, checked: int = 0) -> None:
        dtype = torch.float32 if device.type == "mps" else torch.float64
        self.sum = torch.tensor(float(loss_sum), dtype=dtype, device=device)
        self.checked = checked

    def add(self, loss: torch.Tensor) -> None:
        self.sum.add_(loss.detach().to(self.sum.dtype))

    def value(self) -> float:
        return float(self.sum)  # the host sync

    def reset(self) -> None:
        self.sum.zero_()


def check_finite(ctx: D.DistContext, total_loss: float, run_id: str, first: int, at: int,
                 log_every: int) -> None:
    """Stop every process (one line) when the loss summed over steps ``first..at`` is NaN/Inf in
    any of them (a collective under DDP)."""
    if D.any_flag(ctx, not math.isfinite(total_loss)):
        seen = total_loss if not math.isfinite(total_loss) else "non-finite in another process"
        raise ConfigError(f"run {run_id}: the loss became {seen} in one of the training "
                          f"steps {first}..{at} (checked every log_every={log_every} steps): lower "
                          f"the learning rate (recipe lr) or check the data")


def is_sync_point(step: int, recipe, total: int) -> bool:
    """A step where the loop syncs anyway (train row, evaluation, checkpoint, end)."""
    return (step % recipe.log_every == 0 or step % recipe.eval_every == 0
            or step % recipe.checkpoint_every == 0 or step == total)


class StopRequest:
    """Catches SIGINT/SIGTERM while training (main thread only) so the loop can checkpoint."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._old: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum, frame):  # noqa: ARG002
        if self.signum is not None:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        self.signum = signum
        log.warning("received %s: saving a checkpoint after this step, then stopping",
                    signal.Signals(signum).name)

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)
        return False

    def should_stop(self, ctx: D.DistContext, session_done: bool, step: int, recipe,
                    total: int) -> bool:
        """Whether every process stops after ``step``: a signal seen by any process or the
        session's step limit, agreed on at sync points only under DDP (each agreement syncs);
        never after the last step (the run then finishes)."""
        want = self.signum is not None or session_done
        if ctx.distributed:
            want = D.any_flag(ctx, want) if session_done or is_sync_point(step, recipe, total) else False
        return want and step < total

    def reason(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "max_steps_this_session"
