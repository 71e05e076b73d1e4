"""method=smac: the space as ConfigSpace sees it, failures told as each protocol says, the study's repeats and
power-of-two snapping under protocol=paper, and a study on the surrogate that keeps SMAC's files in its run folder
and resumes to the uninterrupted run's trials. (The shared proposer contract is in test_proposers.py.)"""

import ConfigSpace as CS
import pytest
from smac.runhistory.enumerations import StatusType

from jaxhpo.journal import Journal
from jaxhpo.proposers import make_proposer
from jaxhpo.protocol import ProtocolConfig
from jaxhpo.space import Space
from tests.conftest import REPO, run_cli
from tests.test_proposers import PAPER, SPACE, objective, record, study


def test_the_space_keeps_its_scales_and_types_in_configspace():
    cs = make_proposer("smac", SPACE, 0).configspace
    paper_space = Space.from_file(REPO / "hydra_configs/space/autoresearch.yaml", "log_snap")
    paper_cs = make_proposer("smac", paper_space, 0, protocol=PAPER).configspace
    for p in SPACE.params:
        hp, paper_hp = cs[p.name], paper_cs[p.name]
        assert hp.default_value == p.default == paper_hp.default_value
        if p.type == "categorical":
            assert isinstance(hp, CS.CategoricalHyperparameter) and tuple(hp.choices) == p.choices
        elif p.pow2:  # jaxhpo: the powers in order; the study: a log-uniform integer snapped after the draw
            assert isinstance(hp, CS.OrdinalHyperparameter) and tuple(hp.sequence) == p.levels
            assert isinstance(paper_hp, CS.UniformIntegerHyperparameter) and paper_hp.log
            assert (paper_hp.lower, paper_hp.upper) == (p.low, p.high)
        else:
            kind = CS.UniformIntegerHyperparameter if p.type == "int" else CS.UniformFloatHyperparameter
            assert isinstance(hp, kind) and (hp.lower, hp.upper, hp.log) == (p.low, p.high, p.log)
    assert sum(p.pow2 for p in SPACE.params) >= 3  # the test covers powers of two at all


@pytest.mark.parametrize("protocol, failure_cost", [(None, 1.5 + 1.0), (PAPER, 100.0)])
def test_failures_are_told_as_the_protocol_says(protocol, failure_cost):
    p = make_proposer("smac", SPACE, 0, protocol=protocol)
    default = SPACE.default()
    p.tell(record(0, default, 1.5, "default"))
    statuses = {}
    for status in ("oom", "crashed", "timeout"):
        prop = p.ask([])
        p.tell(record(1, prop.params, None, "smac", status=status, meta=prop.meta))
        statuses[status] = (tuple(sorted(prop.meta["smac_params"].items())), prop.meta["smac_seed"])
    rh = p._optimizer().runhistory  # by configuration and seed: the study's SMAC may run one again, seed apart
    told = {(tuple(sorted(dict(rh.get_config(k.config_id)).items())), k.seed): v for k, v in rh.items()}
    for status, key in statuses.items():
        value = told[key]
        assert value.cost == failure_cost
        assert value.status == (StatusType.MEMORYOUT if status == "oom" else StatusType.CRASHED)
    assert told[(tuple(sorted(default.items())), 0)].cost == 1.5


def test_the_studys_smac_runs_configurations_again_and_snaps_powers_of_two():
    paper_space = Space.from_file(REPO / "hydra_configs/space/autoresearch.yaml", "log_snap")
    p = make_proposer("smac", paper_space, 1, protocol=PAPER)
    assert p.deterministic is False
    p.tell(record(0, SPACE.default(), objective(SPACE.default()), "default"))
    proposals = []
    for number in range(1, 60):
        proposals.append(p.ask([]))
        p.tell(record(number, proposals[-1].params, objective(proposals[-1].params), "smac",
                      meta=proposals[-1].meta))  # fmt: skip
    keys = [tuple(sorted(q.params.items())) for q in proposals]
    assert len(set(keys)) < len(keys)  # the intensifier's repeats (3 to 8 of 59 on seeds 0-3)
    pow2 = [q.name for q in SPACE.params if q.pow2]
    raw = [q.meta["smac_params"][n] for q in proposals for n in pow2]
    assert any(v & (v - 1) for v in raw)  # SMAC drew integers that are not powers of two ...
    assert all(q.params[n] & (q.params[n] - 1) == 0 for q in proposals for n in pow2)  # ... and they ran snapped
    _, _, ours = study("smac", seed=1, n=60)
    assert len({tuple(sorted(q.params.items())) for q in ours}) == len(ours)  # jaxhpo's: each configuration once
    assert make_proposer("smac", SPACE, 0, protocol=ProtocolConfig(), deterministic=False).deterministic is False


def test_options_are_checked():
    for bad, line in (({"n_trials": 0}, "smac: n_trials must be an integer >= 1, got 0"),
                      ({"deterministic": "yes"}, "smac: deterministic must be true, false or null, got 'yes'")):
        with pytest.raises(ValueError) as e:
            make_proposer("smac", SPACE, 0, **bad)
        assert str(e.value) == line


def surrogate_smac(run_dir, *extra, hash_seed: int):
    """A SMAC study on the surrogate, in a process whose string hashes are salted with `hash_seed`."""
    return run_cli("jaxhpo", "+method=smac", "trainer=surrogate", "study.budget_s=null", f"hydra.run.dir={run_dir}",
                   *extra, env={"PYTHONHASHSEED": str(hash_seed)})  # fmt: skip


def test_a_smac_study_keeps_its_files_in_the_run_folder_and_resumes_as_if_never_stopped(tmp_path):
    # Each process salts its hashes differently: the same trials regardless (ConfigSpace's hash is; see smac3.py).
    whole = surrogate_smac(tmp_path / "whole", "study.max_trials=36", hash_seed=1)
    assert whole.returncode == 0, whole.stderr[-3000:]
    assert list((tmp_path / "whole/smac_output").rglob("runhistory.json"))
    assert not (REPO / "smac3_output").exists()
    part = surrogate_smac(tmp_path / "part", "study.max_trials=30", hash_seed=2)
    assert part.returncode == 0, part.stderr[-3000:]
    rest = surrogate_smac(tmp_path / "part", "study.max_trials=36", hash_seed=3)  # SMAC rebuilt from the journal
    assert rest.returncode == 0 and "resuming: 30 finished trials" in rest.stderr, rest.stderr[-3000:]
    trials = {}
    for name in ("whole", "part"):
        with Journal(tmp_path / name / "journal.sqlite", readonly=True) as journal:
            trials[name] = journal.trials()
    assert [(t.params, t.val_bpb) for t in trials["part"]] == [(t.params, t.val_bpb) for t in trials["whole"]]
    assert {t.proposer for t in trials["whole"][1:]} == {"smac"} and len(trials["whole"]) == 36
