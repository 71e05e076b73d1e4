"""The study protocol: the rules a study runs by besides its method -- what a failure is told as, what the budget
is charged, how powers of two are drawn, which CMA-ES, Centaur and agent -- one key each.

`protocol=jaxhpo` (the default, hydra_configs/protocol/jaxhpo.yaml) is jaxhpo's own choice for each key;
`protocol=paper` (hydra_configs/protocol/paper.yaml) is what the study's code (ferreirafabio/autoresearch-automl)
did, key by key, so one departure can be ablated at a time (`protocol=paper protocol.cmaes=evosax`):

    key                  jaxhpo                              paper (the study's code)
    cmaes                evosax: mean at the default,        optuna: Optuna's CmaEsSampler defaults (mean at the
                         sigma0 0.25, every parameter        box's centre, sigma0 1/6, categoricals drawn at random
                                                             and left out, trial 0 not told)
    failure_value        null: just behind the worst success 100.0 (val_bpb told for any failed trial)
    budget_charge        wall: every trial its wall time     training: an ok trial its training seconds, a failed
                                                             one its wall time
    pow2_prior           uniform: each power of two alike    log_snap: a log-uniform integer snapped to the nearest
                                                             power of two (unequal probabilities)
    centaur              jaxhpo: turns 10, 13, 16, ...;      paper: turns 12, 15, 18, ... (count % 3 == 0); its
                         mean shown, reply by schema, an     prompt; an LLM error tells CMA-ES 100 for its own sample
                         LLM error falls back to CMA-ES      and the LLM turn is retried on the next trial
    agent                jaxhpo: jaxhpo's prompt             paper: its prompt ("Be creative but principled"),
                                                             missing keys from the defaults, an LLM error is a trial
                                                             that never ran
    available_vram       (paper prompts only)                "~76GB", the line the study's prompts showed
    optuna_tpe           multivariate: Optuna 5's default    univariate: Optuna 4.8's default, which the study ran
                         TPESampler (method=optuna_tpe)      (its TPESampler(seed) took every default)
    avoid_failures       true: random, tpe and evosax's      false: the study's samplers had no model of failure
                         cmaes redraw what the failure
                         model predicts to fail (their
                         `avoid_failures` option, null)
    smac_deterministic   true: method=smac runs each         false: SMAC's default; its intensifier runs a
                         configuration once                  configuration up to 3 times (same training seed)

paper.yaml also sets `trial.gpu_memory_fraction: 0.543` (the study's cap: about 76 GB of an H200) and
`llm.json_mode: none` (the study sent no response_format).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from model.config import Rule, one_of, optional

CMAES_VARIANTS = ("evosax", "optuna")
BUDGET_CHARGES = ("wall", "training")
POW2_PRIORS = ("uniform", "log_snap")
LLM_PROTOCOLS = ("jaxhpo", "paper")
OPTUNA_TPE_VARIANTS = ("multivariate", "univariate")
# The error of a trial that never ran because its LLM call failed (protocol=paper's centaur and agent).
NOT_RUN_PREFIX = "llm error: "


@dataclass
class ProtocolConfig:
    """The `protocol/` config group (see the module docstring for each key's two values)."""

    name: str = "jaxhpo"
    cmaes: str = "evosax"
    failure_value: Optional[float] = None
    budget_charge: str = "wall"
    pow2_prior: str = "uniform"
    centaur: str = "jaxhpo"
    agent: str = "jaxhpo"
    available_vram: str = "~76GB"
    optuna_tpe: str = "multivariate"
    avoid_failures: bool = True
    smac_deterministic: bool = True


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) < float("inf")


PROTOCOL_RULES: dict[str, Rule] = {
    "protocol.cmaes": one_of(CMAES_VARIANTS),
    "protocol.failure_value": optional(Rule(_finite, "must be a finite number", float("inf")),
                                       "to rank failures just behind the worst success"),
    "protocol.budget_charge": one_of(BUDGET_CHARGES),
    "protocol.pow2_prior": one_of(POW2_PRIORS),
    "protocol.centaur": one_of(LLM_PROTOCOLS),
    "protocol.agent": one_of(LLM_PROTOCOLS),
    "protocol.optuna_tpe": one_of(OPTUNA_TPE_VARIANTS),
}


def charged_seconds(trial, budget_charge: str) -> float:
    """What `trial` costs the study's budget: its wall time, or (budget_charge="training", the study's rule) an ok
    trial's training seconds and a failed one's wall time."""
    if budget_charge == "training" and not trial.failed and trial.training_seconds is not None:
        return trial.training_seconds
    return trial.wall_seconds
