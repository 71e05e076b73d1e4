"""Learning curves for the surrogate, so a surrogate study can be pruned (`study.pruner` with trainer=surrogate).

Fitted on real trials that reported at rungs (`rungs` of each row: the held-out bpb at fractions of the budget, as
the built-in trainer writes them for a pruner) and finished ok. At each measured fraction f a rung's value is a
line in the trial's own final val_bpb, a_f + b_f * final, plus a residual of the measured spread s_f; a trial's
residuals are correlated across fractions as the data's are (exp(-|ln f1 - ln f2| / length), the length fitted to
the measured correlations), and drawn from its seed and configuration, so a rerun reports the same curve. The
surrogate puts in the val_bpb it predicts (noise included), so a curve ends where its trial would, and early rungs
order trials as loosely as real ones do (`python -m jaxhpo.surrogate curves` compares the two on held-out trials).
The configuration enters only through its final value: with tens of curves, a model of each configuration's own
curve shape fitted worse held out (README). Fractions between measured ones are interpolated in ln f; outside
them a curve would be extrapolated: refused."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from jaxhpo.surrogate.data import Observations, SurrogateError
from jaxhpo.surrogate.model import encode, features, key_values
from model.config import TrainConfig

MIN_CURVES = 10


@dataclass
class _Curves:
    """The data's curves: for each measured fraction, {trial index: (rung value, final val_bpb)}."""

    at: dict[float, dict[int, tuple[float, float]]]
    trials: int


def _curve_rows(obs: Observations) -> list[dict]:
    """The rows with a learning curve of trials that finished ok and that the trainer would still run."""
    _, kept = features(obs)
    return [row for row in kept if row["status"] == "ok" and row.get("rungs")]


def _curves(rows: list[dict], source: str) -> _Curves:
    at: dict[float, dict[int, tuple[float, float]]] = {}
    for n, row in enumerate(rows):
        for fraction, value in row["rungs"]:
            at.setdefault(round(fraction, 6), {})[n] = (value, row["val_bpb"])
    if len(rows) < MIN_CURVES:
        raise SurrogateError(f"{source} holds {len(rows)} learning curves of successful trials; pruning a surrogate "
                             f"study needs at least {MIN_CURVES}: collect them with benchmarks/surrogate_data.py "
                             "(README, Pruning)")  # fmt: skip
    return _Curves({f: v for f, v in sorted(at.items()) if len(v) >= MIN_CURVES}, len(rows))


def _line(points: dict[int, tuple[float, float]]) -> tuple[float, float, float]:
    """Least squares of rung value on final val_bpb: (a, b, residual std)."""
    value, final = np.array(list(points.values())).T
    b, a = np.polyfit(final, value, 1)
    residual = value - (a + b * final)
    return float(a), float(b), float(np.sqrt(np.sum(residual**2) / max(1, len(value) - 2)))


def _correlation_length(curves: _Curves, lines: dict[float, tuple[float, float, float]]) -> float:
    """The length, in ln f, over which a trial's residuals decorrelate: least squares of exp(-d / length) on the
    correlations measured between every two fractions."""
    from scipy.optimize import minimize_scalar

    fs = list(curves.at)
    pairs = []
    for i, f in enumerate(fs):
        for g in fs[i + 1:]:
            common = sorted(set(curves.at[f]) & set(curves.at[g]))
            if len(common) < MIN_CURVES:
                continue
            r = [[curves.at[h][k][0] - lines[h][0] - lines[h][1] * curves.at[h][k][1] for k in common] for h in (f, g)]
            pairs.append((abs(np.log(g / f)), np.corrcoef(r)[0, 1]))
    if not pairs:
        return 1.0
    d, c = np.array(pairs).T
    return float(minimize_scalar(lambda length: np.sum((c - np.exp(-d / length)) ** 2), bounds=(0.01, 100.0),
                                 method="bounded").x)  # fmt: skip


class LearningCurves:
    """A trial's held-out bpb at fractions of its budget, given its final val_bpb."""

    def __init__(self, obs: Observations):
        self.obs = obs
        curves = _curves(_curve_rows(obs), obs.source)
        self.curves = curves.trials
        self.lines = {f: _line(points) for f, points in curves.at.items()}
        self.length = _correlation_length(curves, self.lines)
        self.fractions = (min(self.lines), max(self.lines))

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
        rng = np.random.default_rng([cfg.seed, zlib.crc32(np.round(x, 9).tobytes()), 1])
        return self.draw(np.array(fractions, dtype=float), np.array([final] * len(fractions)), rng)

    def draw(self, fractions: np.ndarray, finals: np.ndarray, rng: np.random.Generator) -> list[float]:
        """Rung values at `fractions` of one trial whose final values are `finals` (one per fraction)."""
        known = np.log(list(self.lines))
        a, b, s = (np.interp(np.log(fractions), known, [line[k] for line in self.lines.values()]) for k in range(3))
        distance = np.abs(np.log(fractions)[:, None] - np.log(fractions)[None, :])
        cov = np.outer(s, s) * np.exp(-distance / self.length)
        return [float(v) for v in a + b * finals + rng.multivariate_normal(np.zeros(len(s)), cov)]


def cross_validate_curves(obs: Observations, folds: int = 5) -> list[dict]:
    """Held-out fit of the curves (5-fold, whole trials held out): at each measured fraction, the mean absolute
    error of the line's value, and Spearman ρ between the final val_bpb and the rung value, of the real trials and
    of the surrogate's (its draw for the same finals): the second should match the first, which is how loosely
    an early rung orders trials."""
    from scipy.stats import spearmanr

    rows = _curve_rows(obs)
    curves = _curves(rows, obs.source)
    order = np.random.default_rng(0).permutation(curves.trials)
    out = {f: {"fraction": f, "trials": len(points), "errors": [], "real": [], "drawn": []}
           for f, points in curves.at.items()}  # fmt: skip
    rng = np.random.default_rng(0)
    for fold in np.array_split(order, folds):
        held = set(fold.tolist())
        train = Observations([r for i, r in enumerate(rows) if i not in held], obs.space, obs.trainer, obs.source,
                             obs.data_id)  # fmt: skip
        model = LearningCurves(train)
        for k in held:
            fs = [f for f in curves.at if k in curves.at[f]]
            values, finals = np.array([curves.at[f][k] for f in fs]).T
            drawn = model.draw(np.array(fs), finals, rng)
            for f, v, final, d in zip(fs, values, finals, drawn):
                a, b, _ = model.lines.get(f, (0.0, 1.0, 0.0))
                out[f]["errors"].append(abs(a + b * final - v))
                out[f]["real"].append((final, v))
                out[f]["drawn"].append((final, d))
    scores = []
    for r in out.values():
        real, drawn = np.array(r["real"]), np.array(r["drawn"])
        scores.append({"fraction": r["fraction"], "trials": r["trials"], "mae": float(np.mean(r["errors"])),
                     "spearman_real": float(spearmanr(real[:, 0], real[:, 1]).statistic),
                     "spearman_drawn": float(spearmanr(drawn[:, 0], drawn[:, 1]).statistic)})  # fmt: skip
    return scores
