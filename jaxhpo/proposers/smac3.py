"""SMAC3 behind jaxhpo's ask/tell: `method=smac`, SMAC's HyperparameterOptimizationFacade (a random forest over
the configurations told so far, expected improvement maximised by local and random search, a Sobol initial design)
driven as the study's SMAC backend drove it.

- The space in ConfigSpace: floats and integers on their own scale (log where the space says log), categoricals
  as Categorical. Powers of two follow protocol.pow2_prior: `uniform` (jaxhpo's) makes each an Ordinal over its
  powers, so SMAC's forest splits on their order; `log_snap` (the study's) a log-scaled Integer over [low, high]
  that this proposer snaps to the nearest power of two (ties to the lower) before it runs, SMAC told the integer
  it drew, as the study's runner snapped and told.
- Scenario(n_trials, seed, deterministic). `n_trials` sizes the initial design (a quarter of it, at most 10 per
  hyperparameter: 25 Sobol points for the study's 100); SMAC does not stop asking after it. `deterministic`
  null follows protocol.smac_deterministic: the study's SMAC (false, SMAC's default) lets its intensifier run a
  configuration again, up to 3 times in all, to compare it with the incumbent; a trial's training seed is the
  study's, so under a FLOP budget or the surrogate a repeat returns the same val_bpb (on a GPU, almost) and only
  spends budget. jaxhpo's (true) runs each configuration once.
- A failure is told as protocol.failure_value (the study's 100), or just behind the worst success when null, with
  status MEMORYOUT for an OOM and CRASHED otherwise (SMAC's model learns from both; the study said MEMORYOUT for
  every failure).
- Trials SMAC did not ask for (trial 0, an LLM's, a warm start) are told as trials of their own, seed 0.
- SMAC writes its run history to `workdir` (the study sets it to `<run folder>/smac_output`; a temporary folder
  when nobody does), and never reads it back: the journal is the record.

Replay, as the Optuna samplers do it: a told trial this proposer handed out (its meta holds `smac_params`) but did
not ask for in this process -- a resumed study telling its journal -- is asked again and told. With one worker
SMAC's seeded generators hand out the same configuration they did the first time, so the state is the
uninterrupted run's; if they do not (trials of a parallel study finished in another order), what ran is told.
"""

from __future__ import annotations

import logging
import tempfile
import zlib
from pathlib import Path
from typing import Any, Mapping, Sequence

from jaxhpo.journal import TrialRecord
from jaxhpo.llm.paper import snap_pow2
from jaxhpo.proposers.base import Proposal, Proposer, told_value
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Param, Space, plain

# Ask SMAC again this many times for a configuration that is not running before handing out a running one's twin.
_MAX_REASKS = 20


def _import_smac():
    try:
        import ConfigSpace
        import smac
    except ImportError as e:
        raise ValueError(f"method smac needs the smac package ({e}); install it with: pip install smac") from None
    # ConfigSpace hashes a configuration by hash(repr(...)), which Python salts per process, and SMAC's local search
    # starts from list(set(configurations)): the same seed proposed other configurations in another process, so a
    # resumed study diverged from the run it resumed. An unsalted hash of the same string orders them the same way
    # in every process (equal configurations still hash alike).
    ConfigSpace.Configuration.__hash__ = _stable_hash
    return ConfigSpace, smac


def _stable_hash(config) -> int:
    return zlib.crc32(repr(config).encode())


def _hyperparameter(cs_module, p: Param):
    if p.type == "categorical":
        return cs_module.Categorical(p.name, list(p.choices), default=p.default)
    if p.pow2 and p.prior != "log_snap":
        return cs_module.OrdinalHyperparameter(p.name, list(p.levels), default_value=p.default)
    if p.type == "int":
        return cs_module.Integer(p.name, (int(p.low), int(p.high)), log=p.log or p.pow2, default=int(p.default))
    return cs_module.Float(p.name, (float(p.low), float(p.high)), log=p.log, default=float(p.default))


class SMACProposer(Proposer):
    """SMAC3's hyperparameter-optimization facade over the space (`method=smac`)."""

    name = "smac"
    supports_warmstart = True
    protocol_defaults = {"deterministic": "smac_deterministic"}

    def __init__(self, space: Space, seed: int, n_trials: int = 100, deterministic: bool | None = None,
                 protocol: ProtocolConfig | None = None):  # fmt: skip
        super().__init__(space, seed, protocol)
        if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 1:
            raise ValueError(f"smac: n_trials must be an integer >= 1, got {n_trials!r}")
        if deterministic is not None and not isinstance(deterministic, bool):
            raise ValueError(f"smac: deterministic must be true, false or null, got {deterministic!r}")
        self._cs, self._smac = _import_smac()
        self.n_trials = n_trials
        self.deterministic = self.protocol.smac_deterministic if deterministic is None else deterministic
        self.configspace = self._cs.ConfigurationSpace(seed=seed)
        self.configspace.add([_hyperparameter(self._cs, p) for p in space.params])
        self._facade = None  # built on first use, when the study has made the run folder
        self._live: dict[int, Any] = {}  # SMAC trials handed out and not yet told, by ask number
        self._held: list[tuple[int, Any]] = []  # asked while a twin was running: handed out once it is not
        self._asks = 0
        self._ok: list[float] = []  # told successes, for failure_value=null

    def ask(self, history: Sequence[TrialRecord], pending: Sequence[Mapping] = ()) -> Proposal:
        running = [dict(p) for p in pending]
        for i, (number, info) in enumerate(self._held):
            if self._params(info) not in running:
                del self._held[i]
                return self._proposal(number, info)
        for _ in range(_MAX_REASKS):
            number, info = self._ask()
            if self._params(info) not in running:
                return self._proposal(number, info)
            self._held.append((number, info))
        number, info = self._held.pop()
        return self._proposal(number, info)

    def tell(self, trial: TrialRecord) -> None:
        from smac.runhistory import TrialInfo, TrialValue
        from smac.runhistory.enumerations import StatusType

        raw = trial.meta.get("smac_params")
        if raw is None:  # not SMAC's (or its meta was lost): a running ask of the same configuration, else its own
            values = self.space.clamp(trial.params)[0]
            number = next((k for k, live in self._live.items() if self._params(live) == values), None)
            if number is not None:
                info = self._live.pop(number)
                self._held = [(k, held) for k, held in self._held if k != number]
            else:
                info = TrialInfo(self._cs.Configuration(self.configspace, values=values), seed=0)
        else:
            info = self._live.pop(trial.meta.get("smac_ask"), None)
            if info is None:  # replay: the same draw, asked again
                info = self._ask(keep=False)[1]
                if self._raw(info) != raw or info.seed != trial.meta.get("smac_seed"):
                    info = TrialInfo(self._cs.Configuration(self.configspace, values=raw),
                                     seed=trial.meta.get("smac_seed"))  # fmt: skip
        cost = told_value(trial, self._ok, self.protocol.failure_value)
        status = StatusType.SUCCESS if not trial.failed else (
            StatusType.MEMORYOUT if trial.status == "oom" else StatusType.CRASHED)  # fmt: skip
        self._optimizer().tell(info, TrialValue(cost=cost, status=status))
        if not trial.failed:
            self._ok.append(trial.val_bpb)

    # -- internals ---------------------------------------------------------------------------------------------

    def _optimizer(self):
        if self._facade is None:
            if self.workdir is None:
                self._tmp = tempfile.TemporaryDirectory(prefix="jaxhpo-smac-")  # removed with the proposer
                self.workdir = Path(self._tmp.name)
            scenario = self._smac.Scenario(self.configspace, name="smac", output_directory=Path(self.workdir),
                                           deterministic=self.deterministic, n_trials=self.n_trials,
                                           seed=self.seed)  # fmt: skip
            facade = self._smac.HyperparameterOptimizationFacade
            model = facade.get_model(scenario)
            # The forest's default n_jobs=-1 predicts each small batch of the local search on a thread pool: on
            # 2 cores more than half of an ask went to joblib's synchronisation (asks 2.6x faster on one thread).
            model._rf_opts["n_jobs"] = 1
            self._facade = facade(scenario, target_function=_never_called, model=model, overwrite=True,
                                  logging_level=logging.ERROR)  # fmt: skip
        return self._facade

    def _ask(self, keep: bool = True) -> tuple[int, Any]:
        """SMAC's next trial and its ask number; kept until told unless `keep` is false (a replayed ask)."""
        info = self._optimizer().ask()
        number, self._asks = self._asks, self._asks + 1
        if keep:
            self._live[number] = info
        return number, info

    def _raw(self, info) -> dict:
        return {n: plain(info.config[n]) for n in self.space.names}

    def _params(self, info) -> dict:
        """What SMAC's configuration runs as: log_snap's Integers snapped to powers of two."""
        return snap_pow2(self.space, self._raw(info), None)

    def _proposal(self, number: int, info) -> Proposal:
        meta = {"smac_ask": number, "smac_params": self._raw(info), "smac_seed": info.seed}
        return Proposal(self._params(info), self.name, meta)


def _never_called(config, seed: int = 0) -> float:
    raise RuntimeError("jaxhpo drives SMAC by ask and tell; SMAC never runs a trial itself")
