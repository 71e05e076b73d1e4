"""Learning curves for the surrogate, so a surrogate study can be pruned (`study.pruner` with trainer=surrogate).

Fitted on real trials that reported at rungs (`rungs` of each row: the held-out bpb at fractions of the budget, as
the built-in trainer writes them for a pruner) and finished ok. What is modelled is a rung's excess over the trial's
own final val_bpb, as a function of the configuration and the fraction: the surrogate adds it to the val_bpb it
predicts (noise included), so a configuration's curve ends where its trial would, the seed's noise moves the whole
curve as it does in a real run, and the order of two configurations at a rung is the order their curves have in the
data. A fraction outside the measured ones would be extrapolated: refused."""

from __future__ import annotations

import numpy as np

from jaxhpo.surrogate.data import Observations, SurrogateError, base_configs
from jaxhpo.surrogate.model import encode, key_values
from jaxhpo.trial import trial_config
from model.config import ConfigError, TrainConfig

MIN_CURVES = 10


class LearningCurves:
    """A configuration's held-out bpb at a fraction of its budget, given its final val_bpb."""

    def __init__(self, obs: Observations):
        from sklearn.ensemble import ExtraTreesRegressor  # here: every study imports this module, few prune

        self.obs = obs
        base, trial = base_configs(obs.trainer)
        xs, gaps, curves = [], [], 0
        for row in obs.rows:
            if row["status"] != "ok" or not row.get("rungs"):
                continue
            try:
                cfg, _ = trial_config(base, obs.space, row["params"], trial)
            except (ConfigError, ValueError):
                continue
            x = encode(obs.space, key_values(obs.space, cfg))
            curves += 1
            for fraction, value in row["rungs"]:
                xs.append([*x, fraction])
                gaps.append(value - row["val_bpb"])
        if curves < MIN_CURVES:
            raise SurrogateError(f"{obs.source} holds {curves} learning curves of successful trials; pruning a "
                                 f"surrogate study needs at least {MIN_CURVES}: collect them with "
                                 "benchmarks/surrogate_data.py and study.pruner_rungs (README, Pruning)")  # fmt: skip
        self.curves = curves
        xs_arr = np.array(xs)
        self.fractions = (float(xs_arr[:, -1].min()), float(xs_arr[:, -1].max()))
        self.model = ExtraTreesRegressor(n_estimators=100, min_samples_leaf=2, random_state=0).fit(xs_arr, gaps)

    def check_rungs(self, rungs: tuple[float, ...]) -> None:
        """Refuse rungs outside the fractions the curves were measured at (SurrogateError, one line)."""
        lo, hi = self.fractions
        if outside := [f for f in rungs if not lo - 1e-3 <= f <= hi + 1e-3]:
            raise SurrogateError(f"rung {outside[0]:.4g} is outside the fractions {self.obs.source}'s learning "
                                 f"curves were measured at ({lo:.4g}..{hi:.4g}); choose study.pruner_rungs in "
                                 "that range")  # fmt: skip

    def values(self, cfg: TrainConfig, fractions: list[float], final: float) -> list[float]:
        """The held-out bpb of `cfg`'s trial at each of `fractions`, for a trial that ends at `final`."""
        x = encode(self.obs.space, key_values(self.obs.space, cfg))
        gaps = self.model.predict(np.array([[*x, f] for f in fractions]))
        return [float(final + g) for g in gaps]
