"""The study's configuration: the Hydra structured-config schema behind hydra_configs/config.yaml, and the range
of each of the study's own settings (`STUDY_RULES`, checked by `check_study_settings`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from jaxhpo.llm.client import LLMConfig, check_llm_config
from jaxhpo.protocol import PROTOCOL_RULES, ProtocolConfig
from jaxhpo.pruners import PRUNERS
from jaxhpo.space import SpaceConfig
from jaxhpo.surrogate.model import CLASSIFIERS, REGRESSORS
from jaxhpo.trial import TrialConfig
from jaxhpo.workers import EXECUTORS
from model.config import (
    FIELD_RULES,
    ConfigError,
    POSITIVE_INT,
    ModelConfig,
    Rule,
    at_least,
    get_field,
    non_negative,
    one_of,
    optional,
    positive,
)
from model.data import DataConfig
from model.optim import OptimConfig


@dataclass
class MethodConfig:
    """The `method/` config group: which proposer, and its options."""

    name: str = MISSING
    options: dict[str, Any] = field(default_factory=dict)


TRAINERS = ("gpt", "surrogate", "script", "python")


@dataclass
class TrainerConfig:
    """The `trainer/` config group: what a trial is. gpt: the Flax GPT trained in a subprocess (jaxhpo.trial);
    surrogate: models fitted on real trials answer it in milliseconds (jaxhpo.surrogate, settings in `surrogate`);
    script: your training script, its constants set per trial; python: your function, called per trial in a
    subprocess (both jaxhpo.script)."""

    name: str = "gpt"
    path: Optional[str] = None  # script: the training script
    args: list[str] = field(default_factory=list)  # script: its command-line arguments
    python: Optional[str] = None  # script: the interpreter that runs it; None: the study's
    cwd: Optional[str] = None  # script: its working directory; None: the script's folder
    target: Optional[str] = None  # python: package.module:function, called as function(config, budget) -> metrics
    # script: how to read study.metric from the output: null for `METRIC: value` lines, or re:<regex> whose group is
    # the value; python: null, or the key of the returned dict if it is not study.metric
    metric: Optional[str] = None


LOGGERS = ("none", "mlflow")
DIRECTIONS = ("minimize", "maximize")


@dataclass
class LoggerConfig:
    """The `logger/` config group: where a study's trials are also logged (jaxhpo.mlflow_logger)."""

    name: str = "none"
    tracking_uri: Optional[str] = None  # mlflow: None = sqlite:///<run dir>/mlflow.db
    experiment: str = "jaxhpo"  # mlflow: the experiment the study's run goes to


@dataclass
class SurrogateConfig:
    """trainer=surrogate: the real trials it is fitted on (a table, or journals in its place) and its models."""

    table: str = "benchmarks/data/surrogate_tiny.csv"  # with its .json sidecar, from benchmarks/surrogate_data.py
    journals: list[str] = field(default_factory=list)  # study journals to fit on instead of the table
    # Learning curves (trials that reported at rungs), read only by a study that prunes: a table, or a journal.
    curves: str = "benchmarks/data/surrogate_tiny_curves.csv"
    # Of val_bpb and cost, and of the status: what `python -m jaxhpo.surrogate fit` scored best on the table (README).
    regressor: str = "gp"
    classifier: str = "lightgbm"
    noise_std: Optional[float] = None  # val_bpb noise between seeds; None = measured from the data's repeats
    cache_dir: Optional[str] = "~/.cache/jaxhpo"  # fitted models cached by data, models and code; None = fit each time


@dataclass
class StudySettings:
    """When a study stops (after max_trials trials, once the summed trial wall time reaches budget_s, or when
    trials keep being refused for one reason), and how many trials run at once."""

    max_trials: int = 20
    budget_s: Optional[float] = 900.0  # summed trial wall time (the study charged an ok trial its training time)
    # What a trial scores and which way is better: a key of the built-in trainer's result (val_bpb, final_train_loss,
    # tokens_per_second, ...), or the name a script prints / a function returns (trainer=script|python).
    metric: str = "val_bpb"
    direction: str = "minimize"  # or maximize
    workers: int = 1  # trials running at once, each on its own GPU or share of the CPU cores (jaxhpo.workers)
    # Stop once this many trials in a row were refused for the same reason (jaxhpo.study); 0 or None = never.
    max_consecutive_refusals: Optional[int] = 5
    # Stop hopeless trials at rungs (jaxhpo.pruners): none | median | asha, with the rungs as fractions of the
    # trial budget (None: median 0.25, 0.5, 0.75; asha eta^-2, eta^-1), the trials a rung needs before it prunes,
    # and asha's eta (it keeps the best 1/eta at each rung).
    pruner: str = "none"
    pruner_rungs: Optional[list[float]] = None
    pruner_min_trials: int = 5
    pruner_eta: int = 3


@dataclass
class StudyConfig:
    """One study: a method searching a space over the trainer's configuration."""

    method: MethodConfig = MISSING
    space: SpaceConfig = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    study: StudySettings = field(default_factory=StudySettings)
    trial: TrialConfig = field(default_factory=TrialConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)  # used only by methods that ask an LLM (llm, centaur)
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)  # jaxhpo's rules, or the study's (paper)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    surrogate: SurrogateConfig = field(default_factory=SurrogateConfig)  # used only by trainer=surrogate
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0


ConfigStore.instance().store(name="study_schema", node=StudyConfig)


def _submitit_knows(cluster: str) -> bool:
    from submitit.core.plugins import get_executors  # imported only to check a cluster someone named

    return cluster in get_executors()


# The study's own settings, each field's range; the trainer's rules for the trial.* values every trial takes.
STUDY_RULES: dict[str, Rule] = {
    "study.max_trials": at_least(1),
    "study.metric": Rule(lambda v: bool(v.strip()), "must name a metric, e.g. val_bpb", ""),
    "study.direction": one_of(DIRECTIONS),
    "study.budget_s": optional(positive(" seconds"), "for no budget"),
    "study.workers": at_least(1),
    "study.max_consecutive_refusals": optional(non_negative(" trials"), "to never stop (as 0 does)"),
    "study.pruner": one_of(PRUNERS),
    "study.pruner_rungs": optional(Rule(lambda v: len(v) > 0 and FIELD_RULES["rungs"].ok(v),
                                       f"{FIELD_RULES['rungs'].why}, at least one, e.g. [0.25,0.5]", [0.5, 0.25]),
                                   "for the pruner's own"),  # fmt: skip
    "study.pruner_min_trials": at_least(1),
    "study.pruner_eta": at_least(2, "must be at least 2 (asha keeps the best 1/eta of the trials at a rung)"),
    "trial.budget": optional(FIELD_RULES["budget"], "for flops on a CPU (with trial.budget_flops), else time"),
    "trial.time_budget_s": FIELD_RULES["time_budget_s"],
    "trial.budget_flops": optional(positive(" FLOPs"), "unless trial.budget=flops"),
    "trial.budget_tokens": optional(POSITIVE_INT, "unless trial.budget=tokens"),
    "trial.budget_steps": optional(POSITIVE_INT, "unless trial.budget=steps"),
    "trial.memory_limit_gb": FIELD_RULES["memory_limit_gb"],
    "trial.gpu_memory_fraction": FIELD_RULES["gpu_memory_fraction"],
    "trial.timeout_s": optional(positive(" seconds"), "for automatic"),
    "trial.compute_dtype": FIELD_RULES["compute_dtype"],
    "trial.executor": one_of(EXECUTORS),
    "trial.submitit.cluster": optional(
        Rule(_submitit_knows, "choose a cluster submitit knows, e.g. slurm or local", "pbs"),
        "for slurm where sbatch exists, else local",
    ),
    "trial.submitit.gpus_per_job": non_negative(),
    "trial.submitit.cpus_per_job": POSITIVE_INT,
    "trial.submitit.mem_gb": optional(positive(), "for the cluster's default"),
    "seed": FIELD_RULES["seed"],
    "trainer.name": one_of(TRAINERS),
    "logger.name": one_of(LOGGERS),
    "surrogate.regressor": one_of(REGRESSORS),
    "surrogate.classifier": one_of(CLASSIFIERS),
    "surrogate.noise_std": optional(non_negative(" val_bpb"), "to measure it from the data"),
    **PROTOCOL_RULES,
}


def check_study_settings(cfg: StudyConfig) -> None:
    """Refuse the study's own settings out of range (STUDY_RULES) and invalid llm.* values, whatever the method:
    ConfigError or LLMError, one line naming the key. The trainer's settings are checked against the space by
    `jaxhpo.study.Study`."""
    for key, rule in STUDY_RULES.items():
        rule.check(key, get_field(cfg, key))
    check_llm_config(cfg.llm)
    if cfg.study.pruner != "none" and (why := _cannot_prune(cfg)):
        raise ConfigError(f"study.pruner={cfg.study.pruner}: {why}, or set study.pruner=none")


def _cannot_prune(cfg: StudyConfig) -> str | None:
    """Why the study's trials cannot be pruned, or None."""
    if cfg.protocol.name == "paper":
        return "protocol=paper runs every trial to its end, as the study did"
    if cfg.trainer.name not in ("gpt", "surrogate"):
        return (f"trainer={cfg.trainer.name} reports no rungs; the built-in trainer (trainer=gpt) and its surrogate "
                "do")  # fmt: skip
    if cfg.study.metric != "val_bpb":
        return f"its rungs score held-out bpb, so it prunes studies of val_bpb, not {cfg.study.metric}"
    if cfg.trial.executor != "local":
        return "a submitit job is out of the study's reach while it runs: use trial.executor=local"
    return None

