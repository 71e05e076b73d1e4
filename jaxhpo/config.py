"""The study's configuration: the Hydra structured-config schema behind hydra_configs/config.yaml."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from jaxhpo.llm.client import LLMConfig
from jaxhpo.space import SpaceConfig
from jaxhpo.trial import TrialConfig
from model.config import ModelConfig
from model.data import DataConfig
from model.optim import OptimConfig


@dataclass
class MethodConfig:
    """The `method/` config group: which proposer, and its options."""

    name: str = MISSING
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class StudySettings:
    """When a study stops (after max_trials trials or once the summed trial wall time reaches budget_s), and
    how many trials run at once."""

    max_trials: int = 20
    budget_s: Optional[float] = 900.0  # summed trial wall time, the original study's rule; None = no limit
    workers: int = 1  # trials running at once, each on its own GPU or share of the CPU cores (jaxhpo.workers)


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
    seed: int = 0


ConfigStore.instance().store(name="study_schema", node=StudyConfig)
