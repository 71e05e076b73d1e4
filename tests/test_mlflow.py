"""logger=mlflow against a real MLflow store (SQLite, MLflow 3's local one): the study's run, a nested run per trial
with its parameters, metrics, tags and files, and a resume that continues the run without logging a trial twice."""

import pytest

from tests.conftest import run_cli
from tests.test_script import TOY

mlflow = pytest.importorskip("mlflow", reason="logger=mlflow needs mlflow-skinny (pip install -e '.[test]')")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # SQLAlchemy's, inside MLflow's store
def test_a_study_is_an_mlflow_run_with_a_nested_run_per_trial(tmp_path):
    args = ["+method=random", *TOY, "logger=mlflow", f"hydra.run.dir={tmp_path}"]
    assert run_cli("jaxhpo", *args, "study.max_trials=3").returncode == 0
    again = run_cli("jaxhpo", *args, "study.max_trials=5")  # a resume: the same run goes on
    assert again.returncode == 0, again.stderr[-3000:]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("jaxhpo")
    runs = client.search_runs([exp.experiment_id], max_results=100)
    (study,) = [r for r in runs if r.data.tags.get("jaxhpo") == "study"]
    trials = sorted((r for r in runs if r.data.tags.get("mlflow.parentRunId") == study.info.run_id),
                    key=lambda r: int(r.data.tags["trial"]))  # fmt: skip
    assert [r.info.run_name for r in trials] == [f"trial {n:04d}" for n in range(5)]  # none logged twice
    assert study.data.params["method"] == "random" and study.data.metrics["trials"] == 5
    first = trials[0]
    assert first.data.tags["proposer"] == "default" and first.data.params["LEARNING_RATE"] == "0.01"
    assert first.data.metrics["val_loss"] > 0 and first.data.metrics["training_seconds"] > 0  # study.metric's name
    assert study.data.metrics["best_val_loss"] == min(r.data.metrics["val_loss"] for r in trials if "val_loss" in r.data.metrics)
    files = {f.path for f in client.list_artifacts(first.info.run_id)}
    assert {"train.py", "train.log"} <= files  # the script's copy with the trial's values, and its output
    assert (tmp_path / "mlflow_run_id").read_text().strip() == study.info.run_id


def test_a_store_that_fails_is_one_warning_and_the_study_goes_on(tmp_path):
    (tmp_path / "a_file").write_text("not a folder")  # a store below a file cannot be made, even by root
    proc = run_cli("jaxhpo", "+method=random", *TOY, "logger=mlflow",
                   f"logger.tracking_uri=sqlite:///{tmp_path / 'a_file/x.db'}", "study.max_trials=2",
                   f"hydra.run.dir={tmp_path / 'run'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("warning: logger=mlflow stopped (start:") == 1
    assert (tmp_path / "run/summary.json").exists()
