"""The surrogate's models, fitted on real trials (`Observations`): a classifier of how a configuration ends (ok,
oom, diverged, ...), a regressor of its val_bpb, and regressors of its cost (log wall seconds given how it ends,
log training seconds of an ok trial); plus the seed-to-seed noise measured where the data repeats a configuration
under several seeds. A configuration is what its trial trains: the values of the data's space keys in its
TrainConfig, after the study's repairs, so the study and the data see the same thing."""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from jaxhpo.space import Space
from jaxhpo.surrogate.data import Observations, SurrogateError, base_configs
from jaxhpo.trial import Outcome, pruned, trial_config
from model.config import ConfigError, TrainConfig, get_field
from model.progress import Rungs

if TYPE_CHECKING:
    from jaxhpo.surrogate.curves import LearningCurves


def _regressors() -> dict[str, Callable[[int], object]]:
    from lightgbm import LGBMRegressor
    from sklearn.ensemble import ExtraTreesRegressor, RandomForestRegressor
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

    return {
        "extra_trees": lambda d: ExtraTreesRegressor(n_estimators=100, min_samples_leaf=2, random_state=0),
        "random_forest": lambda d: RandomForestRegressor(n_estimators=100, min_samples_leaf=2, random_state=0),
        "lightgbm": lambda d: LGBMRegressor(n_estimators=300, learning_rate=0.05, num_leaves=15, min_child_samples=5,
                                            random_state=0, n_jobs=1, verbose=-1),
        "gp": lambda d: GaussianProcessRegressor(
            ConstantKernel() * Matern(length_scale=np.ones(d), nu=2.5) + WhiteKernel(), normalize_y=True,
            random_state=0),
    }  # fmt: skip


def _classifiers() -> dict[str, Callable[[int], object]]:
    from lightgbm import LGBMClassifier
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    return {
        "extra_trees": lambda d: ExtraTreesClassifier(n_estimators=50, random_state=0),
        "random_forest": lambda d: RandomForestClassifier(n_estimators=50, random_state=0),
        "lightgbm": lambda d: LGBMClassifier(n_estimators=200, learning_rate=0.05, num_leaves=15, min_child_samples=5,
                                             random_state=0, n_jobs=1, verbose=-1),
    }  # fmt: skip


REGRESSORS = ("extra_trees", "random_forest", "lightgbm", "gp")
CLASSIFIERS = ("extra_trees", "random_forest", "lightgbm")


class _Constant:
    """A classifier for data with one outcome only."""

    def __init__(self, label: str):
        self.classes_ = np.array([label])

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return np.ones((len(x), 1))


def encode(space: Space, values: Mapping[str, object]) -> np.ndarray:
    """Features of a configuration given as {trainer key: value}: each number scaled to [0, 1] over the space's range
    (on a log scale where the space samples one), each categorical one-hot."""
    out = []
    for p in space.params:
        v = values[p.key]
        if p.type == "categorical":
            out += [float(v == c) for c in p.choices]
            continue
        lo, hi, x = float(p.low), float(p.high), float(v)
        if p.log or p.pow2:
            lo, hi, x = math.log(lo), math.log(hi), math.log(max(x, 1e-300))
        out.append((x - lo) / (hi - lo))
    return np.array(out)


def key_values(space: Space, cfg: TrainConfig) -> dict:
    """The values `cfg` trains with for the keys the space sets."""
    return {p.key: get_field(cfg, p.key) for p in space.params}


def features(obs: Observations) -> tuple[np.ndarray, list[dict]]:
    """The feature matrix of the data's trials (each as its trainer trained it) and the rows it keeps: those the
    trainer would still accept."""
    base, trial = base_configs(obs.trainer)
    xs, kept = [], []
    for row in obs.rows:
        try:
            cfg, _ = trial_config(base, obs.space, row["params"], trial)
        except (ConfigError, ValueError):
            continue
        xs.append(encode(obs.space, key_values(obs.space, cfg)))
        kept.append(row)
    return np.array(xs), kept


def with_status(x: np.ndarray, status, statuses: list[str]) -> np.ndarray:
    """Features with the status one-hot appended: what the cost regressor sees."""
    onehot = np.array([[float(s == c) for c in statuses] for s in np.atleast_1d(status)])
    return np.hstack([x, onehot])


def measured_noise(x: np.ndarray, rows: list[dict]) -> tuple[float, int]:
    """The pooled standard deviation of val_bpb between seeds of one configuration, and how many configurations
    with two or more seeds it pools (0: the data repeats none, the noise is 0)."""
    groups: dict[bytes, dict[int, float]] = {}
    for xi, row in zip(x, rows):
        if row["status"] == "ok":
            groups.setdefault(np.round(xi, 9).tobytes(), {})[row["seed"]] = row["val_bpb"]
    spreads = [(len(g) - 1, np.var(list(g.values()), ddof=1)) for g in groups.values() if len(g) >= 2]
    if not spreads:
        return 0.0, 0
    dof = sum(d for d, _ in spreads)
    return float(math.sqrt(sum(d * v for d, v in spreads) / dof)), len(spreads)


class Surrogate:
    """Models fitted on `obs`; `run` has `jaxhpo.trial.run_trial`'s signature and answers a trial in milliseconds."""

    def __init__(self, obs: Observations, regressor: str = "extra_trees", classifier: str = "extra_trees",
                 noise_std: float | None = None):  # fmt: skip
        if regressor not in REGRESSORS:
            raise SurrogateError(f"unknown surrogate.regressor={regressor!r}; choose one of: {', '.join(REGRESSORS)}")
        if classifier not in CLASSIFIERS:
            raise SurrogateError(f"unknown surrogate.classifier={classifier!r}; choose one of: "
                                 f"{', '.join(CLASSIFIERS)}")  # fmt: skip
        self.obs, self.regressor_name, self.classifier_name = obs, regressor, classifier
        x, rows = features(obs)
        if sum(r["status"] == "ok" for r in rows) < 2:
            raise SurrogateError(f"{obs.source}: fewer than 2 successful trials the trainer still accepts")
        self.statuses = sorted({r["status"] for r in rows})
        status = np.array([r["status"] for r in rows])
        ok = status == "ok"
        self.status_model = fit_classifier(classifier, x, status)
        make = _regressors()[regressor]
        self.val_model = make(x.shape[1]).fit(x[ok], [r["val_bpb"] for r, k in zip(rows, ok) if k])
        wall = np.log(np.maximum([r["wall_seconds"] for r in rows], 1e-3))
        self.wall_model = make(x.shape[1] + len(self.statuses)).fit(with_status(x, status, self.statuses), wall)
        train_rows = [i for i, r in enumerate(rows) if r["status"] == "ok" and r["training_seconds"] is not None]
        self.train_model = make(x.shape[1]).fit(
            x[train_rows], np.log(np.maximum([rows[i]["training_seconds"] for i in train_rows], 1e-3))
        ) if len(train_rows) >= 2 else None  # fmt: skip
        self.measured_noise, self.noise_groups = measured_noise(x, rows)
        self.noise_std = self.measured_noise if noise_std is None else float(noise_std)
        self.curves: LearningCurves | None = None  # set by a study that prunes (jaxhpo.surrogate.curves)

    def predict(self, cfg: TrainConfig) -> dict:
        """How the trial of `cfg` ends: status, val_bpb (with noise drawn for its seed and configuration: the
        same configuration and seed always give the same value, as a FLOP budget does), wall and training
        seconds, and the classifier's probability of each status."""
        x = encode(self.obs.space, key_values(self.obs.space, cfg))[None, :]
        proba = self.status_model.predict_proba(x)[0]
        classes = list(self.status_model.classes_)
        status = str(classes[int(np.argmax(proba))])
        wall = float(np.exp(self.wall_model.predict(with_status(x, status, self.statuses))[0]))
        out = {"status": status, "wall_seconds": wall, "training_seconds": None, "val_bpb": None,
               "p_status": {str(c): round(float(p), 4) for c, p in zip(classes, proba)}}  # fmt: skip
        if status == "ok":
            rng = np.random.default_rng([cfg.seed, zlib.crc32(np.round(x, 9).tobytes())])
            out["val_bpb"] = float(self.val_model.predict(x)[0] + self.noise_std * rng.standard_normal())
            if self.train_model is not None:
                out["training_seconds"] = min(wall, float(np.exp(self.train_model.predict(x)[0])))
        return out

    def run(self, cfg: TrainConfig, trial_dir: Path, timeout_s: float | None = None, env=None, cancel=None,
            watch: Callable[[], dict | None] | None = None) -> Outcome:  # fmt: skip
        """The trial's Outcome as the surrogate predicts it; its wall seconds are the predicted ones. With rungs
        (`cfg.rungs`, a pruning study's), an ok trial reports its learning curve's values through RUNGS_FILE as the
        trainer does, and `watch` (the pruner's) may stop it there: it is then charged its start and the share of
        its training it ran."""
        started = time.time()
        p = self.predict(cfg)
        result = {"status": p["status"], "val_bpb": p["val_bpb"], "training_seconds": p["training_seconds"],
                  "surrogate": {"p_status": p["p_status"], "data_id": self.obs.data_id}}  # fmt: skip
        if cfg.rungs and p["status"] == "ok":
            if self.curves is None:
                raise SurrogateError("this surrogate has no learning curves to report rungs from")
            training = p["training_seconds"] or p["wall_seconds"]
            Path(trial_dir).mkdir(parents=True, exist_ok=True)
            rungs = Rungs(cfg.rungs, Path(trial_dir))
            for fraction, value in zip(cfg.rungs, self.curves.values(cfg, cfg.rungs, p["val_bpb"])):
                rungs.report(None, value, None, fraction * training)
                if watch is not None and (report := watch()) is not None:
                    outcome = pruned(report, started, time.time())
                    outcome.wall_seconds = p["wall_seconds"] - (1 - fraction) * training
                    return outcome
            result["rungs"] = rungs.reports
        error = None if p["status"] == "ok" else f"surrogate: predicted {p['status']} (p={max(p['p_status'].values())})"
        return Outcome(p["status"], p["val_bpb"], error, p["wall_seconds"], started, time.time(), result)


def _fit_key(obs: Observations, regressor: str, classifier: str) -> str:
    """What a fitted surrogate depends on: the data, the model names, this module and the libraries' versions."""
    import lightgbm
    import sklearn

    parts = [obs.data_id, regressor, classifier, sklearn.__version__, lightgbm.__version__, np.__version__,
             Path(__file__).read_text()]  # fmt: skip
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def fitted(obs: Observations, regressor: str, classifier: str, noise_std: float | None,
           cache_dir: str | Path | None) -> Surrogate:  # fmt: skip
    """The Surrogate of `obs`, from `cache_dir` where a fit of the same data, models and code is cached there (a
    GP fit on hundreds of trials takes tens of seconds: a grid of studies fits once), else fitted and cached.
    An unreadable cache file is fitted again; None: no cache."""
    path = Path(cache_dir).expanduser() / "surrogate" / f"{_fit_key(obs, regressor, classifier)}.pkl" if cache_dir \
        else None  # fmt: skip
    if path is not None and path.exists():
        try:
            with open(path, "rb") as f:
                surrogate = pickle.load(f)
            surrogate.obs = obs
            surrogate.noise_std = surrogate.measured_noise if noise_std is None else float(noise_std)
            return surrogate
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError, ValueError):
            pass
    surrogate = Surrogate(obs, regressor, classifier, noise_std)
    if path is not None:
        try:  # written whole, then renamed: studies of a grid that start together never read half a file
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                pickle.dump(surrogate, f)
            tmp.replace(path)
        except OSError:
            pass  # a cache we cannot write costs the next study a fit, nothing else
    return surrogate


def fit_classifier(name: str, x: np.ndarray, status: np.ndarray):
    """The status classifier `name` fitted on (x, status); a constant one where the data has a single status."""
    if len(set(status)) == 1:
        return _Constant(str(status[0]))
    return _classifiers()[name](x.shape[1]).fit(x, status)


def cross_validate(obs: Observations, folds: int = 5) -> dict:
    """Held-out fit of every candidate: R² and Spearman ρ of val_bpb (ok trials), accuracy of the status and of the
    OOM boundary (oom or not), R² of log wall seconds; k-fold, shuffled with a fixed seed."""
    from scipy.stats import spearmanr
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold

    x, rows = features(obs)
    status = np.array([r["status"] for r in rows])
    ok = np.flatnonzero(status == "ok")
    y = np.array([rows[i]["val_bpb"] for i in ok])
    wall = np.log(np.maximum([r["wall_seconds"] for r in rows], 1e-3))
    xw = with_status(x, status, sorted(set(status)))
    kfold = KFold(n_splits=min(folds, len(ok)), shuffle=True, random_state=0)
    regressors = _regressors()
    out = {"regressors": {}, "classifiers": {}, "trials": len(rows), "ok": len(ok),
           "statuses": {s: int((status == s).sum()) for s in sorted(set(status))}}  # fmt: skip
    for name in REGRESSORS:
        pred, wall_pred = np.empty(len(ok)), np.empty(len(rows))
        for train, test in kfold.split(ok):
            pred[test] = regressors[name](x.shape[1]).fit(x[ok[train]], y[train]).predict(x[ok[test]])
        for train, test in kfold.split(x):
            wall_pred[test] = regressors[name](xw.shape[1]).fit(xw[train], wall[train]).predict(xw[test])
        out["regressors"][name] = {"r2": float(r2_score(y, pred)), "spearman": float(spearmanr(y, pred).statistic),
                                   "cost_r2": float(r2_score(wall, wall_pred))}  # fmt: skip
    for name in CLASSIFIERS:
        pred = np.empty(len(rows), dtype=object)
        for train, test in kfold.split(x):
            pred[test] = fit_classifier(name, x[train], status[train]).predict(x[test])
        oom = status == "oom"
        out["classifiers"][name] = {"accuracy": float(np.mean(pred == status)),
                                    "oom_accuracy": float(np.mean((pred == "oom") == oom)),
                                    "oom_recall": float(np.mean(pred[oom] == "oom")) if oom.any() else None}  # fmt: skip
    # What always predicting the commonest status scores: the accuracy a classifier has to beat.
    out["majority_accuracy"] = max(out["statuses"].values()) / len(rows)
    out["noise_std"], out["noise_groups"] = measured_noise(x, rows)
    return out
