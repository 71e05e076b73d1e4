"""Progress of a training run: a live bar on a terminal, a plain line every few seconds in a log file, and the
rung reports a study's pruner reads while the run goes on."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

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


RUNGS_FILE = "rungs.jsonl"


class Rungs:
    """The run's reports at `fractions` of its budget: each a JSON line appended to RUNGS_FILE in `out_dir` and
    flushed at once, because the study reads that file while the run goes on (jaxhpo.pruners) and may stop it."""

    def __init__(self, fractions: list[float], out_dir: Path):
        self.fractions, self.path = list(fractions), Path(out_dir) / RUNGS_FILE
        self.reports: list[dict] = []
        self.path.unlink(missing_ok=True)  # a rerun of an interrupted trial reports afresh

    def due(self, progress: float) -> bool:
        """Whether the run, `progress` of the way through its budget, has passed a rung it has not reported."""
        return len(self.reports) < len(self.fractions) and progress >= self.fractions[len(self.reports)]

    def report(self, step: int | None, value: float, train_loss: float | None, training_seconds: float) -> None:
        """Report the next rung: the held-out score `value` (a quarter of the evaluation set's bpb) and the rest
        (a surrogate's trial knows no step or training loss: None)."""
        rung = len(self.reports)
        line = {"rung": rung, "fraction": self.fractions[rung], "step": step, "value": round(value, 6),
                "train_loss": None if train_loss is None else round(train_loss, 6),
                "training_seconds": round(training_seconds, 3)}  # fmt: skip
        self.reports.append(line)
        with open(self.path, "a") as f:
            f.write(json.dumps(line) + "\n")
