"""What a study's trials score, as its LLM prompts put it: the metric's name, its direction and the task.

Proposers see every value minimized (a maximized metric negated, `jaxhpo.study.Study._oriented`); a prompt shows
an LLM the metric's own values under its own name, and reads numbers an LLM writes (LLAMBO's scores) back the
same way: `own` is its own inverse.
"""

from __future__ import annotations

from dataclasses import dataclass

# The built-in trainer's task as the prompts have always put it (a default study's prompts stay as they were)
GPT_TASK = "We tune the hyperparameters of a small GPT language model. Each trial trains it for a fixed time"


@dataclass(frozen=True)
class Objective:
    """The metric (`study.metric`), `direction` (minimize|maximize) and the task's first sentence, ending where
    the trial reports the metric."""

    metric: str = "val_bpb"
    direction: str = "minimize"
    task: str = GPT_TASK

    @property
    def sign(self) -> float:
        """-1 for a maximized metric (proposers see it negated), 1 otherwise."""
        return -1.0 if self.direction == "maximize" else 1.0

    @property
    def better(self) -> str:
        return "higher" if self.sign < 0 else "lower"

    def own(self, value: float) -> float:
        """A minimized value as the metric's own (and back)."""
        return self.sign * value

    def show(self, value: float, spec: str = ".4f") -> str:
        """A minimized value written as the metric's own."""
        return format(self.own(value), spec)

    def reports(self) -> str:
        """`<task> and reports <metric>: <lower|higher> is better.` (val_bpb with what it stands for)."""
        name = "val_bpb (validation bits per byte)" if self.metric == "val_bpb" else self.metric
        return f"{self.task} and reports {name}: {self.better} is better."


VAL_BPB = Objective()


def for_trainer(metric: str, direction: str, trainer: str, target: str | None = None) -> Objective:
    """The objective of a study of `trainer` (gpt, surrogate, script, python); `target` names a script's path or a
    Python function."""
    if trainer == "script":
        task = f"We tune the UPPER_CASE constants of the training script {target}. Each trial runs it"
    elif trainer == "python":
        task = f"We tune the configuration of the training function {target}. Each trial calls it"
    else:
        task = GPT_TASK
    return Objective(metric, direction, task)
