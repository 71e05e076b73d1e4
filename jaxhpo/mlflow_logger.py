"""logger=mlflow: a study as an MLflow run, each trial a nested run.

The study's run holds its settings as params (method, seed, space id, trainer, budget) and, at the end, the
summary's figures as metrics; each finished trial is a nested run named `trial NNNN` with the trial's parameters,
its study.metric (val_bpb by default), wall and training seconds as metrics, its status, proposer, error, space
id (and a hybrid trial's structure id and kind of change) as tags, and the small files of its folder (config.yaml, result.json, a
script's copy, the log) as artifacts. The store is `logger.tracking_uri`, by default an SQLite file in the run folder
(`sqlite:///RUN/mlflow.db`, MLflow 3's local store; artifacts beside it in RUN/mlflow_artifacts), so
`mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db` shows it. A resume continues the same run (its id is kept in
RUN/mlflow_run_id) and logs only the trials not logged yet. Logging never stops a study: a failure is one warning,
and the logger stays off for the rest of it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

from jaxhpo.journal import TrialRecord

RUN_ID_FILE = "mlflow_run_id"
ARTIFACTS = ("config.yaml", "result.json", "train.py", "train.log")  # train.py: a script trainer's copy
MAX_ARTIFACT_BYTES = 1 << 20  # a trial's log past 1 MiB stays in its folder


class MLflowLogger:
    """start(settings) once, trial(record, folder) per finished trial, finish(summary) at the end."""

    def __init__(self, run_dir: Path, tracking_uri: str | None, experiment: str, warn: Callable[[str], None],
                 metric: str = "val_bpb"):  # fmt: skip
        self.run_dir, self.warn, self.metric = Path(run_dir), warn, metric
        self.tracking_uri = tracking_uri or f"sqlite:///{self.run_dir.resolve() / 'mlflow.db'}"
        self.experiment = experiment
        self.client: Any = None
        self.run_id: str | None = None
        self.logged: set[int] = set()

    def _guard(self, what: str, action: Callable[[], None]) -> None:
        if self.client is None and what != "start":
            return
        try:
            action()
        except Exception as e:  # MLflow's, the store's, the file system's: never the study's problem
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            self.warn(f"warning: logger=mlflow stopped ({what}: {why})")
            self.client = None

    def start(self, settings: Mapping[str, Any]) -> None:
        """Open (or, on a resume, reopen) the study's run."""
        self._guard("start", lambda: self._start(settings))

    def _start(self, settings: Mapping[str, Any]) -> None:
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        exp = client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(
            self.experiment, artifact_location=(self.run_dir.resolve() / "mlflow_artifacts").as_uri())  # fmt: skip
        id_file = self.run_dir / RUN_ID_FILE
        if id_file.exists():
            self.run_id = id_file.read_text().strip()
            done = client.search_runs([exp_id], f"tags.`mlflow.parentRunId` = '{self.run_id}'", max_results=50000)
            self.logged = {int(r.data.tags["trial"]) for r in done if "trial" in r.data.tags}
        else:
            run = client.create_run(exp_id, run_name=self.run_dir.name, tags={"jaxhpo": "study"})
            self.run_id = run.info.run_id
            id_file.write_text(self.run_id)
            for key, value in settings.items():
                client.log_param(self.run_id, key, value)
        self.exp_id, self.client = exp_id, client

    def trial(self, record: TrialRecord, folder: Path) -> None:
        """Log a finished trial as a nested run (once: a resume skips what is logged)."""
        if record.number not in self.logged:
            self._guard(f"trial {record.number}", lambda: self._trial(record, Path(folder)))

    def _trial(self, t: TrialRecord, folder: Path) -> None:
        tags = {"mlflow.parentRunId": self.run_id, "trial": str(t.number), "status": t.status,
                "proposer": t.proposer, "space_id": t.space_id}  # fmt: skip
        if t.error:
            tags["error"] = t.error[:5000]
        hybrid = (t.meta or {}).get("hybrid")
        if hybrid:
            tags.update(structure_id=hybrid["structure_id"], change=hybrid["change"])
        run = self.client.create_run(self.exp_id, run_name=f"trial {t.number:04d}", tags=tags)
        rid = run.info.run_id
        for name, value in t.params.items():
            self.client.log_param(rid, name, value)
        metrics = {self.metric: t.val_bpb, "wall_seconds": t.wall_seconds, "training_seconds": t.training_seconds}
        for name, value in metrics.items():
            if value is not None:
                self.client.log_metric(rid, name, float(value))
        for name in ARTIFACTS:
            path = folder / name
            if path.is_file() and path.stat().st_size <= MAX_ARTIFACT_BYTES:
                self.client.log_artifact(rid, str(path))
        self.client.set_terminated(rid, "FINISHED" if not t.failed else "FAILED")
        self.logged.add(t.number)

    def finish(self, summary: Mapping[str, Any]) -> None:
        """The summary's figures on the study's run, which ends."""

        def end() -> None:
            names = {"best_val_bpb": f"best_{self.metric}", "trials": "trials", "failed_percent": "failed_percent",
                     "trial_seconds": "trial_seconds", "llm_seconds": "llm_seconds"}  # fmt: skip
            for key, name in names.items():
                if isinstance(summary.get(key), (int, float)):
                    self.client.log_metric(self.run_id, name, float(summary[key]))
            self.client.set_terminated(self.run_id, "FINISHED")

        self._guard("finish", end)


def make_logger(cfg: Any, run_dir: Path, warn: Callable[[str], None], metric: str = "val_bpb") -> MLflowLogger | None:
    """The study's logger for `logger.name` (none: None); ValueError (one line) when mlflow is not installed."""
    if cfg.name == "none":
        return None
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        raise ValueError("logger=mlflow needs MLflow: pip install mlflow-skinny")
    return MLflowLogger(run_dir, cfg.tracking_uri, cfg.experiment, warn, metric)
