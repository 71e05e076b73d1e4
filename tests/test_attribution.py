"""Where a hybrid study's wins came from: the structure tree, the improvement split by kind of change, the variance
between and within structures, and the report's section for them."""

import dataclasses

import pytest

from jaxhpo import attribution, structure
from jaxhpo.journal import Journal
from jaxhpo.proposers import make_proposer
from jaxhpo.report import load_studies, write_report
from tests.test_hybrid import SPACE, TINY, run
from tests.test_proposers import record


def hybrid_history(n: int = 24):
    p = make_proposer("hybrid", SPACE, 0, inner="random", inner_trials=4, structures=3, patience=5)
    return run(p, n)


def test_the_tree_holds_every_structure_under_its_parent():
    history = hybrid_history()
    rows = attribution.structure_tree(history)
    assert rows[0]["structure_id"] == structure.structure_id({}) and rows[0]["depth"] == 0
    assert sum(r["trials"] for r in rows) == len(history)
    ids = [r["structure_id"] for r in rows]
    for r in rows[1:]:
        assert r["parent"] in ids[: ids.index(r["structure_id"])]  # derived from one tried before it
        assert len(r["changes"]) == 1  # the fallback rule makes one change at a time
        assert r["best_val_bpb"] == min(t.val_bpb for t in history if attribution.structure_of(t) == r["structure_id"])
    markdown = attribution.tree_markdown(rows)
    assert all(i in markdown for i in ids) and "(the default)" in markdown


def _trial(number, value, change, sid="a", proposer="x"):
    meta = {"hybrid": {"structure_id": sid, "structure": structure.DEFAULT, "parent": None, "change": change,
                       "phase": "noise" if change == "noise" else "explore"}}  # fmt: skip
    return record(number, {}, value, proposer, meta=meta)


def test_improvement_shares_split_the_best_so_far_by_kind_of_change():
    trials = [record(0, SPACE.default(), 2.0, "default"), _trial(1, 1.98, "noise"), _trial(2, 1.90, "structural"),
              _trial(3, 1.95, "numeric"), _trial(4, None, "numeric"), _trial(5, 1.80, "numeric")]  # fmt: skip
    shares = attribution.improvement_shares(trials)
    assert shares["total"] == pytest.approx(0.20)
    assert shares["noise"] == pytest.approx(0.1) and shares["structural"] == pytest.approx(0.4)
    assert shares["numeric"] == pytest.approx(0.5)
    assert attribution.improvement_shares(trials[:1])["structural"] is None  # nothing improved


def test_variance_decomposition_is_eta_squared():
    trials = [_trial(0, 1.0, "numeric", "a"), _trial(1, 1.2, "numeric", "a"), _trial(2, 2.0, "structural", "b"),
              _trial(3, 2.2, "numeric", "b"), _trial(4, None, "numeric", "b")]  # fmt: skip
    var = attribution.variance_decomposition(trials)
    # means 1.1 and 2.1 around 1.6: between 4 × 0.25 = 1.0; total 1.0 + 4 × 0.01 = 1.04
    assert var["between"] == pytest.approx(1.0 / 1.04) and var["within"] == pytest.approx(0.04 / 1.04)
    assert (var["structures"], var["trials"]) == (2, 4)
    assert attribution.variance_decomposition(trials[:1])["between"] is None


def test_the_report_has_a_structures_section_for_hybrid_studies(tmp_path):
    for method, trials in (("hybrid", hybrid_history()), ("random", hybrid_history()[:1])):
        folder = tmp_path / method / "seed0"
        folder.mkdir(parents=True)
        with Journal(folder / "journal.sqlite") as journal:
            space = SPACE if method == "hybrid" else TINY
            journal.set_study_info({"method": method, "space_id": space.space_id, "seed": 0,
                                    "space": space.definition(), "space_name": space.name,
                                    **({"base_space": TINY.definition()} if method == "hybrid" else {})})  # fmt: skip
            for t in trials:
                journal.append(dataclasses.replace(t, method=method, params={n: t.params[n] for n in space.names}))
    studies, _ = load_studies(tmp_path)
    assert len({s.space_id for s in studies}) == 1  # hybrid is compared with the others on its space file's space
    studies = [s for s in studies if s.method == "hybrid"]
    markdown = write_report(studies, tmp_path, tmp_path / "out")
    section = markdown[markdown.index("## Structures"):markdown.index("## Studies")]
    assert "### hybrid, seed 0" in section and "structural changes made" in section and "between the" in section
    assert "## Structures" not in write_report([dataclasses.replace(studies[0], trials=[
        dataclasses.replace(t, meta={}) for t in studies[0].trials])], tmp_path, tmp_path / "out2")  # fmt: skip
