"""Optuna's samplers behind jaxhpo's ask/tell: `method=optuna_tpe` (TPESampler), `method=optuna_cmaes` and, as
the study ran CMA-ES (`protocol.cmaes=optuna`), `method=cmaes` (CmaEsSampler), driven the way the study's Optuna
backend drove them.

What that means, all Optuna's doing unless said otherwise:
- The parameters are Optuna distributions: floats and integers on their own scale (log where the space says
  log), the powers of two as log-uniform integers over [low, high] that this proposer snaps to the nearest power
  of two (ties to the lower) before they run -- the study's `snap_to_power_of_2`, whatever protocol.pow2_prior
  says (that key is jaxhpo's samplers'). The sampler is told the unsnapped integers it drew.
- Trial 0 (the default) and trials of other proposers that did not come through `ask` are added as finished
  trials: TPE learns from them (the study seeded its baseline so); Optuna's CMA-ES learns only from trials it
  sampled.
- A failure is told as `protocol.failure_value` (the study's 100), or just behind the worst success when null.
- Trials still running are Optuna's running trials: TPE's constant liar (Optuna's default) counts them as poor.
- CMA-ES searches the box normalised to [0, 1] per dimension (log-scaled where log), from its centre, with step
  size sigma0 = 1/6 and population 4 + floor(3 ln d). Categoricals (WINDOW_PATTERN) are not CMA-ES's: Optuna
  draws them at random on every trial, so CMA-ES has 13 dimensions for the 14-parameter space.

Replay. Optuna's state lives in an in-memory study whose trials are asked and told in order. A told trial that
this proposer handed out (its meta holds `optuna_params`) but that is not pending here -- a resumed study telling
its journal -- is asked again, set to the parameters it ran with, and told: with one worker the seeded sampler
draws the same parameters it drew the first time, so the state is the uninterrupted run's.

Centaur (`protocol.centaur=paper`) replaces a proposal by the LLM's configuration: it sets `optuna_params` in the
proposal's meta to the LLM's (clamped, unsnapped) values, and `tell` writes them into the pending Optuna trial
before telling it, as the study overwrote the trial's parameters in Optuna's storage.
"""

from __future__ import annotations

import pickle
from typing import Any, Mapping, Sequence

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from jaxhpo.journal import TrialRecord
from jaxhpo.llm.paper import snap_pow2
from jaxhpo.proposers.base import Proposal, Proposer, told_value
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Param, Space, plain

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _distribution(p: Param) -> BaseDistribution:
    if p.type == "categorical":
        return CategoricalDistribution(list(p.choices))
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log or p.pow2)
    return FloatDistribution(p.low, p.high, log=p.log)


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


class OptunaProposer(Proposer):
    """An Optuna sampler (`self.sampler`, made by the subclass before this __init__ runs) over the space."""

    supports_warmstart = True

    sampler: optuna.samplers.BaseSampler

    def __init__(self, space: Space, seed: int, protocol: ProtocolConfig | None = None):
        super().__init__(space, seed, protocol)
        self.study = optuna.create_study(direction="minimize", sampler=self.sampler)
        # Suggested in the study's (ConfigSpace's, alphabetical) order, so its prompts list the values as it did.
        self._distributions = {p.name: _distribution(p) for p in sorted(space.params, key=lambda p: p.name)}
        self._pending: dict[int, optuna.Trial] = {}  # asked and not yet told, by Optuna trial number
        self._ok: list[float] = []  # told successes, for failure_value=null

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        trial, raw = self._ask()
        self._pending[trial.number] = trial
        return Proposal(self.snap(raw), self.name, {"optuna_trial": trial.number, "optuna_params": raw})

    def tell(self, trial: TrialRecord) -> None:
        raw = trial.meta.get("optuna_params")
        if raw is None:  # trial 0 or another proposer's: recorded (TPE learns from it, Optuna's CMA-ES does not)
            self.study.add_trial(optuna.trial.create_trial(
                params=self.space.clamp(trial.params)[0], distributions=self._distributions,
                value=None if trial.failed else trial.val_bpb,
                state=optuna.trial.TrialState.FAIL if trial.failed else optuna.trial.TrialState.COMPLETE,
            ))  # fmt: skip
        else:
            live = self._pending.pop(trial.meta.get("optuna_trial"), None)
            live = live if live is not None else self._ask()[0]  # replay: the same draw, asked again
            for name, value in raw.items():
                if live.params.get(name) != value:  # what ran is what the sampler learns from (Centaur's LLM turn)
                    self.study._storage.set_trial_param(live._trial_id, name, self._internal(name, value),
                                                        self._distributions[name])  # fmt: skip
            self.study.tell(live, told_value(trial, self._ok, self.protocol.failure_value))
        if not trial.failed:
            self._ok.append(trial.val_bpb)

    def snap(self, raw: Mapping[str, Any]) -> dict:
        """Optuna's values as they run: powers of two snapped (the study's rule), numpy scalars as Python's."""
        return snap_pow2(self.space, {n: plain(raw[n]) for n in self.space.names}, None)

    # -- internals ---------------------------------------------------------------------------------------------

    def _ask(self) -> tuple[optuna.Trial, dict]:
        trial = self.study.ask()
        return trial, {n: plain(_suggest(trial, n, d)) for n, d in self._distributions.items()}

    def _internal(self, name: str, value: Any) -> Any:
        return self._distributions[name].to_internal_repr(value)


def _check_int(method: str, name: str, value: Any, low: int, nullable: bool = False) -> None:
    if value is None and nullable:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{method}: {name} must be an integer >= {low}{' or null' if nullable else ''}, got {value!r}")


class OptunaTPEProposer(OptunaProposer):
    """Optuna's TPESampler with its defaults (`method=optuna_tpe`); `multivariate` null follows protocol.optuna_tpe
    (jaxhpo's: Optuna 5's multivariate default; the paper's: univariate, Optuna 4.8's default, which it ran)."""

    name = "optuna_tpe"

    def __init__(self, space: Space, seed: int, n_startup_trials: int = 10, n_ei_candidates: int = 24,
                 multivariate: bool | None = None, protocol: ProtocolConfig | None = None):  # fmt: skip
        _check_int("optuna_tpe", "n_startup_trials", n_startup_trials, 0)
        _check_int("optuna_tpe", "n_ei_candidates", n_ei_candidates, 1)
        if multivariate is not None and not isinstance(multivariate, bool):
            raise ValueError(f"optuna_tpe: multivariate must be true, false or null, got {multivariate!r}")
        rule = (protocol or ProtocolConfig()).optuna_tpe
        self.multivariate = rule == "multivariate" if multivariate is None else multivariate
        self.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup_trials,
                                                  n_ei_candidates=n_ei_candidates,
                                                  multivariate=self.multivariate)  # fmt: skip
        super().__init__(space, seed, protocol)


class OptunaCMAESProposer(OptunaProposer):
    """Optuna's CmaEsSampler with its defaults: `method=cmaes` under protocol.cmaes=optuna (the study's CMA-ES)."""

    name = "cmaes"

    def __init__(self, space: Space, seed: int, population_size: int | None = None, sigma0: float | None = None,
                 avoid_failures: bool | None = None, protocol: ProtocolConfig | None = None):  # fmt: skip
        # method=cmaes's options, whichever CMA-ES protocol.cmaes picks; Optuna's sampler has no failure model
        if avoid_failures not in (None, False):
            raise ValueError(f"{self.name}: avoid_failures needs protocol.cmaes=evosax (Optuna's CmaEsSampler has no "
                             f"failure model); set it to null or false, got {avoid_failures!r}")
        _check_int(self.name, "population_size", population_size, 2, nullable=True)
        if sigma0 is not None and (isinstance(sigma0, bool) or not isinstance(sigma0, (int, float)) or sigma0 <= 0):
            raise ValueError(f"{self.name}: sigma0 must be a positive number or null, got {sigma0!r}")
        self.sampler = optuna.samplers.CmaEsSampler(seed=seed, popsize=population_size, sigma0=sigma0,
                                                    warn_independent_sampling=False)  # fmt: skip
        super().__init__(space, seed, protocol)

    def paper_state(self, pending: Sequence[Mapping] = ()) -> dict | None:
        """CMA-ES's state as the study's Centaur prompt read it: None until Optuna has stored an optimizer (after
        the first generation); else trials so far (pending ones included), sigma, the top 5 finished trials by
        told value, the covariance matrix and the names of its rows. (Optuna's study already holds the pending
        trials: `pending` is for the interface's sake.)"""
        trials = self.study.get_trials(deepcopy=False)
        for t in reversed(trials):
            parts = {int(k.rsplit(":", 1)[1]): v for k, v in t.system_attrs.items() if k.startswith("cma:optimizer:")}
            if not parts:
                continue
            optimizer = pickle.loads(bytes.fromhex("".join(parts[i] for i in sorted(parts))))
            done = sorted((t for t in trials if t.state == optuna.trial.TrialState.COMPLETE), key=lambda t: t.value)
            names = list(self.sampler.infer_relative_search_space(self.study, t))
            return {
                "n_trials": len(trials), "sigma": float(optimizer._sigma),
                "top": [({n: plain(v) for n, v in t.params.items()}, float(t.value)) for t in done[:5]],
                "cov": optimizer._C.tolist(), "cov_names": names,
            }  # fmt: skip
        return None


class OptunaCMAESMethod(OptunaCMAESProposer):
    """`method=optuna_cmaes`: the same sampler under its own name, beside evosax's `cmaes`, in any protocol."""

    name = "optuna_cmaes"

    def __init__(self, space: Space, seed: int, population_size: int | None = None, sigma0: float | None = None,
                 protocol: ProtocolConfig | None = None):  # fmt: skip
        super().__init__(space, seed, population_size, sigma0, protocol=protocol)  # without method=cmaes's option
