"""Progress of a training run: a live bar on a terminal, a plain line every few seconds in a log file."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn


class TrainProgress:
    """Shows step, loss, tokens/s and what is left of the budget: the steps when the budget fixed their number
    (`steps`), else the training seconds. Use as a context manager and call update() each step."""

    def __init__(self, time_budget_s: float, steps: int | None, log_every_s: float):
        self.steps, self.log_every_s = steps, log_every_s
        self.budget = float(steps) if steps is not None else time_budget_s
        self.console = Console(file=sys.stderr)
        self.live = self.console.is_terminal
        self._last_log = time.monotonic()
        self._bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            TextColumn("step {task.fields[step]}  loss {task.fields[loss]:.4f}  {task.fields[tok_s]:,.0f} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.live,
        )
        self._task = None

    def __enter__(self):
        self._bar.__enter__()
        self._task = self._bar.add_task("train", total=self.budget, step=0, loss=float("nan"), tok_s=0.0)
        return self

    def __exit__(self, *exc):
        return self._bar.__exit__(*exc)

    def update(self, step: int, loss: float, tok_s: float, training_seconds: float) -> None:
        done = step if self.steps is not None else training_seconds
        if self.live:
            self._bar.update(self._task, completed=done, step=step, loss=loss, tok_s=tok_s)
        elif time.monotonic() - self._last_log >= self.log_every_s:
            self._last_log = time.monotonic()
            left = f"{self.steps - step} steps" if self.steps is not None else f"{max(0.0, self.budget - done):.0f}s"
            print(f"step {step}  loss {loss:.4f}  {tok_s:,.0f} tok/s  {left} left", file=sys.stderr, flush=True)
