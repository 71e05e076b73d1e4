"""python -m jaxhpo.export optuna: a study's journal as an Optuna study that Optuna's own tools read and draw."""

import dataclasses

import optuna
import pytest

from jaxhpo.export import main
from jaxhpo.journal import Journal
from tests.test_attribution import hybrid_history
from tests.test_hybrid import SPACE


def write_journal(folder, trials):
    folder.mkdir(parents=True)
    with Journal(folder / "journal.sqlite") as journal:
        journal.set_study_info({"method": "hybrid", "space_id": SPACE.space_id, "seed": 3, "space": SPACE.definition(),
                                "space_name": SPACE.name})  # fmt: skip
        for t in trials:
            journal.append(t)


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # matplotlib plots are "experimental"
def test_a_study_exports_to_optuna_and_draws(tmp_path, capsys):
    history = hybrid_history(12)
    history[5] = dataclasses.replace(history[5], status="oom", val_bpb=None, error="out of memory")
    write_journal(tmp_path / "run", history)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["optuna", str(tmp_path / "run"), "--storage", storage]) == 0
    assert "exported 12 trials (11 complete)" in capsys.readouterr().out
    study = optuna.load_study(study_name="hybrid-seed3", storage=storage)
    assert [t.state.name for t in study.trials].count("FAIL") == 1
    assert study.best_value == pytest.approx(min(t.val_bpb for t in history if not t.failed))
    first = study.trials[3]
    assert first.params["MLP"] == history[3].params["MLP"] and first.params["MATRIX_LR"] == history[3].params["MATRIX_LR"]
    assert first.user_attrs["proposer"] == history[3].proposer and first.user_attrs["change"] == "structural"
    assert first.user_attrs["structure_id"] == history[3].meta["hybrid"]["structure_id"]
    assert study.trials[5].user_attrs["error"] == "out of memory"
    ax = optuna.visualization.matplotlib.plot_optimization_history(study)
    assert len(ax.collections) >= 1  # the trials' scatter


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["optuna", str(tmp_path), "--storage", f"sqlite:///{tmp_path / 'x.db'}"]) == 2
    assert "holds no journal.sqlite" in capsys.readouterr().err
    write_journal(tmp_path / "run", hybrid_history(4))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    assert main(["optuna", str(tmp_path / "run"), "--storage", storage]) == 0
    assert main(["optuna", str(tmp_path / "run"), "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert "already holds a study named 'hybrid-seed3'; pass --name" in err and err.count("\n") == 1
