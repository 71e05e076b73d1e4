"""`python -m jaxhpo.report PATH` on hand-built journals whose every number is known in advance."""

import csv
import statistics
import warnings
from pathlib import Path

import numpy as np
import pytest

from jaxhpo.journal import Journal, PendingTrial, TrialRecord
from jaxhpo.report import best_so_far, plot_convergence, plot_failures
from tests.conftest import run_cli

SPACE_ID, SPACE_NAME = "space-abc123", "tiny"
MULTIRUN = "multirun/2026-11-22_10-00-00"

# (proposer, status, val_bpb, wall_seconds, LLM turn: None for no turn, "" for a used reply, else the fallback reason);
# status "oom predicted" is an oom the memory pre-flight predicted.
TPE = {
    0: [("default", "ok", 1.00, 10, None), ("tpe", "ok", 0.98, 10, None), ("tpe", "oom predicted", None, 5, None),
        ("tpe", "ok", 0.99, 10, None)],
    1: [("default", "ok", 1.00, 10, None), ("tpe", "crashed", None, 2, None), ("tpe", "ok", 0.97, 10, None),
        ("tpe", "oom", None, 5, None)],
}  # fmt: skip
LLM = {
    0: [("default", "ok", 1.00, 10, None), ("llm", "ok", 0.95, 10, ""),
        ("llm→fallback", "ok", 0.99, 10, "unusable reply: no JSON"), ("llm", "diverged", None, 10, "")],
    1: [("default", "ok", 1.00, 10, None), ("llm→fallback", "ok", 0.96, 10, "TimeoutError: timed out"),
        ("llm", "oom", None, 10, ""), ("llm", "ok", 0.965, 10, "")],
}  # fmt: skip


def write_study(folder: Path, method: str, seed: int, trials: list[tuple], info: dict | None = None,
                params: list[dict] | None = None) -> Path:  # fmt: skip
    """A study folder whose journal holds `trials` (see TPE) and the study info the study loop writes; trial i's
    configuration is params[i], {"DEPTH": i + 1} without `params`."""
    folder.mkdir(parents=True)
    info = {"method": method, "space_id": SPACE_ID, "seed": seed, "space": {}, "space_name": SPACE_NAME, **(info or {})}
    with Journal(folder / "journal.sqlite") as journal:
        journal.set_study_info(info)
        for number, (proposer, status, val_bpb, wall, fallback) in enumerate(trials):
            status, _, predicted = status.partition(" ")
            record = TrialRecord(
                number=number, params=params[number] if params else {"DEPTH": number + 1},
                space_id=info["space_id"], method=method,
                proposer=proposer, status=status, val_bpb=val_bpb,
                error=None if status == "ok" else f"{status} in trial {number}",
                wall_seconds=float(wall), training_seconds=None, peak_memory_mb=None,
                started_at=1.8e9 + 100 * number, ended_at=1.8e9 + 100 * number + wall, seed=seed,
                result={"status": status, "predicted": True} if predicted else {},
            )  # fmt: skip
            turn = None
            if fallback is not None:
                turn = {"kind": method, "prompt": "the prompt", "reply": "{}", "parsed": None, "repairs": [],
                        "fallback": fallback or None, "latency_s": 1.5, "model": "smollm2"}  # fmt: skip
            journal.append(record, llm_turn=turn)
    return folder


def build_multirun(base: Path) -> Path:
    """2 methods × 2 seeds in Hydra's multirun layout; tpe's budget only in .hydra/config.yaml (older journals)."""
    root = base / MULTIRUN
    for seed, trials in TPE.items():
        folder = write_study(root / "tpe" / f"seed{seed}", "tpe", seed, trials)
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "config.yaml").write_text("study:\n  max_trials: 4\n  budget_s: 100\n")
    for seed, trials in LLM.items():
        write_study(root / "llm" / f"seed{seed}", "llm", seed, trials, {"budget_s": 50.0, "max_trials": 4})
    return root


@pytest.fixture
def multirun(tmp_path) -> Path:
    """A fresh multirun folder, for tests that add studies to it or write elsewhere."""
    return build_multirun(tmp_path)


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """The multirun folder and the report run on it once, for the tests that only read the result."""
    root = build_multirun(tmp_path_factory.mktemp("reported"))
    return root, report(root)


def report(path: Path, *args: str):
    proc = run_cli("jaxhpo.report", str(path), *args, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


def table(markdown: str, heading: str) -> list[dict]:
    """The Markdown table under `## heading`, as one dict per row keyed by the header."""
    section = markdown.split(f"## {heading}\n", 1)[1]
    lines = [line for line in section.split("##", 1)[0].splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row)) for row in cells[2:]]


def best_cell(bests: list[float]) -> str:
    return f"{statistics.mean(bests):.4f} ± {statistics.stdev(bests):.4f}"


def test_method_table_one_row_per_method_with_the_numbers(reported):
    multirun, proc = reported
    rows = table(proc.stdout, "Methods")
    assert [r["method"] for r in rows] == ["llm", "tpe"]  # sorted by best mean: 0.955 < 0.975
    llm, tpe = rows
    assert llm["studies"] == "2" and tpe["studies"] == "2"
    assert llm["best val_bpb (mean ± std)"] == best_cell([0.95, 0.96]) == "0.9550 ± 0.0071"
    assert tpe["best val_bpb (mean ± std)"] == best_cell([0.98, 0.97]) == "0.9750 ± 0.0071"
    # Bootstrap of the mean of two bests: every resample's mean lies between them, and both ends are reached.
    assert (llm["ci95"], tpe["ci95"]) == ("[0.9500, 0.9600]", "[0.9700, 0.9800]")
    # tpe: 1 oom + (1 crashed, 1 oom) of 8; llm: (1 diverged) + (1 oom) of 8.
    assert (tpe["failed %"], tpe["OOM %"]) == ("37.5", "25.0 (12.5 predicted)")
    assert (llm["failed %"], llm["OOM %"]) == ("25.0", "12.5")
    assert tpe["trials (total)"] == llm["trials (total)"] == "8"
    assert (llm["LLM turns (total)"], llm["LLM calls: failed %"]) == ("6", "33.3")
    assert (tpe["LLM turns (total)"], tpe["LLM calls: failed %"], tpe["LLM s / turn"]) == ("–", "–", "–")
    # tpe: 35 s and 27 s of a 100 s budget (from .hydra/config.yaml); llm: 40 s of 50 s (from the journal).
    assert tpe["budget used / study (mean)"] == "31 s (31 % of 100 s)"
    assert llm["budget used / study (mean)"] == "40 s (80 % of 50 s)"
    assert (multirun / "report.md").read_text() == proc.stdout
    assert "wrote report.md" in proc.stderr and "warning" not in proc.stderr


def test_report_csv_holds_the_same_rows_as_numbers(reported):
    multirun, _ = reported
    with open(multirun / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["method"] for r in rows] == ["llm", "tpe"]
    llm, tpe = rows
    for row in rows:
        assert (row["space_name"], row["space_id"], row["studies"], row["trials"]) == (SPACE_NAME, SPACE_ID, "2", "8")
    assert float(llm["best_val_bpb_mean"]) == pytest.approx(0.955)
    assert float(tpe["best_val_bpb_std"]) == pytest.approx(statistics.stdev([0.98, 0.97]), rel=1e-5)
    assert float(tpe["best_val_bpb_min"]) == pytest.approx(0.97)
    assert (float(tpe["failed_pct"]), float(tpe["oom_pct"])) == (37.5, 25.0)
    assert (float(llm["failed_pct"]), float(llm["oom_pct"])) == (25.0, 12.5)
    assert (float(tpe["oom_predicted_pct"]), float(llm["oom_predicted_pct"])) == (12.5, 0.0)
    assert int(llm["llm_turns"]) == 6 and float(llm["llm_fallback_pct"]) == pytest.approx(100 / 3, rel=1e-5)
    assert tpe["llm_turns"] == "0" and tpe["llm_fallback_pct"] == ""
    assert float(tpe["trial_seconds_mean"]) == 31 and float(tpe["budget_s"]) == 100
    assert float(tpe["budget_used_pct"]) == 31 and float(llm["budget_used_pct"]) == 80
    assert float(llm["best_val_bpb_ci_low"]) == pytest.approx(0.95) and float(llm["best_val_bpb_ci_high"]) == (
        pytest.approx(0.96))
    assert float(tpe["best_val_bpb_ci_low"]) == pytest.approx(0.97)


def test_paired_tests_anytime_ranks_and_importance(reported):
    out = reported[1].stdout
    (pair,) = table(out, "Paired tests")
    assert (pair["method A"], pair["method B"], pair["seeds paired"], pair["A better / B better"]) == (
        "llm", "tpe", "2", "2 / 0")
    assert pair["mean best A − B"] == "-0.0200"  # (0.95 - 0.98 + 0.96 - 0.97) / 2
    assert pair["p (Wilcoxon)"] == pair["lowest p possible"] == "0.5"  # 2 seeds can never give less
    assert "2/2^n" in out and "Wilcoxon signed-rank" in out
    # The common budget is tpe seed 1's 27 s; at 25 % and 50 % both methods still hold the default's 1.0 on
    # both seeds (a tie: 1.5), by 27 s llm is ahead on both.
    ranks = {r["method"]: r for r in table(out, "Anytime ranks")}
    assert list(ranks) == ["llm", "tpe"]
    assert [ranks["llm"][f"rank at {p} %"] for p in (25, 50, 100)] == ["1.50", "1.50", "1.00"]
    assert [ranks["tpe"][f"rank at {p} %"] for p in (25, 50, 100)] == ["1.50", "1.50", "2.00"]
    assert ranks["llm"]["seeds"] == "2" and ranks["llm"]["common budget"] == "27 s (wall)"
    assert "](ranks.png)" in out
    (depth,) = table(out, "Hyperparameter importance")
    assert depth["hyperparameter"] == "DEPTH" and depth["ok trials"] == "11"
    mean, std = map(float, depth["importance (mean ± std)"].split(" ± "))
    assert std >= 0
    for heading in ("Paired tests", "Anytime ranks", "Hyperparameter importance"):
        section = out.split(f"## {heading}\n", 1)[1].split("##", 1)[0]
        assert [line for line in section.splitlines() if line and not line.startswith("|")], heading  # a note


def test_many_seeds_give_a_significant_pair_and_importance_from_the_recorded_space(tmp_path):
    """6 seeds where cmaes beats random on every one; the journal's space definition gives the types."""
    rng = np.random.default_rng(0)
    space = {"space": {"DEPTH": {"type": "int", "key": "model.depth", "low": 1, "high": 8, "default": 1},
                       "WARMUP": {"type": "float", "key": "train.warmup", "low": 0.0, "high": 1.0, "default": 0.0},
                       "ACT": {"type": "categorical", "key": "model.act", "choices": ["relu", "gelu"],
                               "default": "relu"}}}  # fmt: skip
    for seed in range(6):
        for method, second in (("cmaes", 0.90), ("random", 0.95)):
            trials = [("default", "ok", 1.0, 10, None), (method, "ok", second - seed / 1000, 10, None),
                      (method, "ok", 1.05 + seed / 1000, 10, None)]  # fmt: skip
            params = [{"DEPTH": depth, "WARMUP": float(rng.uniform()), "ACT": str(rng.choice(["relu", "gelu"]))}
                      for depth in (1, 2, 3)]  # fmt: skip
            write_study(tmp_path / method / f"seed{seed}", method, seed, trials, space, params)
    out = report(tmp_path).stdout
    methods = {r["method"]: r for r in table(out, "Methods")}
    low, high = (float(x) for x in methods["cmaes"]["ci95"].strip("[]").split(", "))
    assert 0.895 <= low < 0.8975 < high <= 0.9  # around the mean of the bests 0.900, 0.899, ..., 0.895
    (pair,) = table(out, "Paired tests")
    assert (pair["method A"], pair["method B"], pair["seeds paired"], pair["A better / B better"]) == (
        "cmaes", "random", "6", "6 / 0")
    assert float(pair["p (Wilcoxon)"]) == pytest.approx(2 / 2**6, rel=1e-2) and float(pair["p (Wilcoxon)"]) < 0.05
    ranks = {r["method"]: r for r in table(out, "Anytime ranks")}
    assert (ranks["cmaes"]["rank at 100 %"], ranks["random"]["rank at 100 %"]) == ("1.00", "2.00")
    assert ranks["cmaes"]["rank at 25 %"] == "1.50"  # 7.5 s: no trial finished yet
    rows = table(out, "Hyperparameter importance")
    assert sorted(r["hyperparameter"] for r in rows) == ["ACT", "DEPTH", "WARMUP"]
    assert rows[0]["hyperparameter"] == "DEPTH" and {r["ok trials"] for r in rows} == {"36"}
    assert (tmp_path / "ranks.png").stat().st_size > 10_000


def test_best_so_far_counts_the_budget_as_charged():
    trials = [TrialRecord(number=i, params={}, space_id=SPACE_ID, method="tpe", proposer="tpe", status=status,
                          val_bpb=val, error=None, wall_seconds=10.0, training_seconds=6.0, peak_memory_mb=None,
                          started_at=0.0, ended_at=0.0, seed=0)
              for i, (status, val) in enumerate([("oom", None), ("ok", 0.99), ("ok", 1.2)])]  # fmt: skip
    x, y = best_so_far(trials)
    np.testing.assert_array_equal(x, [10, 20, 30])
    np.testing.assert_array_equal(y, [np.nan, 0.99, 0.99])
    x, _ = best_so_far(trials, "training")  # the study's rule: an ok trial its training seconds
    np.testing.assert_array_equal(x, [10, 16, 22])


def test_proposer_table_traces_each_win_to_its_proposer(reported):
    rows = {(r["method"], r["proposer"]): r for r in table(reported[1].stdout, "Proposers")}
    assert list(rows) == [("llm", "default"), ("llm", "llm"), ("llm", "llm→fallback"),
                          ("tpe", "default"), ("tpe", "tpe")]  # fmt: skip
    llm, fallback = rows[("llm", "llm")], rows[("llm", "llm→fallback")]
    # seed 0's best (0.95) came from the LLM, seed 1's (0.96) from a fallback draw.
    assert llm["studies where it proposed the best"] == fallback["studies where it proposed the best"] == "1/2"
    assert (llm["trials"], llm["ok"], llm["failed %"], llm["OOM %"], llm["best val_bpb"]) == (
        "4", "2", "50.0", "25.0", "0.9500")
    assert (fallback["trials"], fallback["ok"], fallback["best val_bpb"]) == ("2", "2", "0.9600")
    # Improvements: each study's default (first success), then 0.95 (llm, seed 0) and 0.96 (fallback, seed 1);
    # 0.99 and 0.965 improved on nothing.
    assert (rows[("llm", "default")]["improvements"], llm["improvements"], fallback["improvements"]) == ("2", "1", "1")
    tpe = rows[("tpe", "tpe")]
    assert (tpe["trials"], tpe["failed %"], tpe["OOM %"], tpe["improvements"]) == ("6", "50.0", "33.3", "2")
    assert tpe["studies where it proposed the best"] == "2/2"
    assert rows[("tpe", "default")]["studies where it proposed the best"] == "0/2"


def test_space_and_study_tables(reported):
    out = reported[1].stdout
    (space,) = table(out, "Search spaces")
    assert (space["space"], space["space_id"], space["studies"], space["methods"], space["trials"]) == (
        SPACE_NAME, SPACE_ID, "4", "llm, tpe", "16")
    assert (space["best val_bpb"], space["best by"]) == ("0.9500", "llm, seed 0")
    studies = {r["study"]: r for r in table(out, "Studies")}
    assert sorted(studies) == ["llm/seed0", "llm/seed1", "tpe/seed0", "tpe/seed1"]
    assert studies["llm/seed1"]["best trial (proposer)"] == "1 (llm→fallback)"


def test_figures_are_written_and_linked(multirun, tmp_path):
    out = tmp_path / "elsewhere"
    proc = report(multirun, "--out", str(out))
    for name in ("convergence.png", "failures.png", "ranks.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / name).stat().st_size > 10_000
        assert f"]({name})" in proc.stdout
    assert {p.name for p in out.iterdir()} == {"report.md", "report.csv", "convergence.png", "failures.png",
                                               "ranks.png"}  # fmt: skip
    assert not (multirun / "report.md").exists()


def test_a_single_study_folder(multirun):
    proc = report(multirun / "tpe" / "seed1")
    (row,) = table(proc.stdout, "Methods")
    assert (row["method"], row["studies"], row["best val_bpb (mean ± std)"]) == ("tpe", "1", "0.9700 ± –")
    assert (row["failed %"], row["OOM %"]) == ("50.0", "25.0")
    assert row["ci95"] == "–"  # one seed: no interval
    assert table(proc.stdout, "Studies")[0]["study"] == "."
    assert (multirun / "tpe" / "seed1" / "report.md").is_file()
    # One method on one seed: nothing to pair or rank, too few trials for importance; each section says so.
    assert "nothing to pair" in proc.stdout and "no ranks" in proc.stdout
    assert "2 successful trials, importance needs at least 10" in proc.stdout
    assert not (multirun / "tpe" / "seed1" / "ranks.png").exists() and "ranks.png)" not in proc.stdout


def test_one_seed_per_method_still_pairs_and_ranks(tmp_path):
    write_study(tmp_path / "tpe" / "seed0", "tpe", 0, TPE[0])
    write_study(tmp_path / "llm" / "seed0", "llm", 0, LLM[0])
    write_study(tmp_path / "random" / "seed0", "random", 0, [("default", "oom", None, 5, None),
                                                            ("random", "crashed", None, 30, None)])  # fmt: skip
    proc = report(tmp_path)
    methods = {r["method"]: r for r in table(proc.stdout, "Methods")}
    assert {r["ci95"] for r in methods.values()} == {"–"}
    pairs = {(r["method A"], r["method B"]): r for r in table(proc.stdout, "Paired tests")}
    assert list(pairs) == [("llm", "tpe"), ("llm", "random"), ("tpe", "random")]
    assert (pairs[("llm", "tpe")]["seeds paired"], pairs[("llm", "tpe")]["p (Wilcoxon)"]) == ("1", "–")
    assert (pairs[("llm", "random")]["seeds paired"], pairs[("llm", "random")]["mean best A − B"]) == ("0", "–")
    ranks = {r["method"]: r for r in table(proc.stdout, "Anytime ranks")}
    # Up to tpe's 35 s: random never succeeds (last); llm's 0.95 at 20 s beats tpe's 0.98.
    assert [ranks[m]["rank at 100 %"] for m in ("llm", "tpe", "random")] == ["1.00", "2.00", "3.00"]
    assert ranks["random"]["common budget"] == "35 s (wall)"
    assert (tmp_path / "ranks.png").stat().st_size > 10_000


def test_studies_on_two_spaces_get_a_row_per_method_and_space(multirun):
    small = {"space_id": "space-big999", "space_name": "small"}
    write_study(multirun / "tpe-small" / "seed0", "tpe", 0, TPE[1][:3], small)
    proc = report(multirun)
    rows = [(r["method"], r["studies"], r["best val_bpb (mean ± std)"]) for r in table(proc.stdout, "Methods")]
    assert rows == [("llm [tiny]", "2", "0.9550 ± 0.0071"), ("tpe [tiny]", "2", "0.9750 ± 0.0071"),
                    ("tpe [small]", "1", "0.9700 ± –")]  # fmt: skip
    with open(multirun / "report.csv", newline="") as f:
        assert [(r["method"], r["space_name"], r["space_id"]) for r in csv.DictReader(f)] == [
            ("llm", SPACE_NAME, SPACE_ID), ("tpe", SPACE_NAME, SPACE_ID), ("tpe", "small", "space-big999")]
    assert [(r["space"], r["studies"], r["trials"]) for r in table(proc.stdout, "Search spaces")] == [
        (SPACE_NAME, "4", "16"), ("small", "1", "3")]
    assert "tpe [small]" in {r["method"] for r in table(proc.stdout, "Proposers")}


def test_studies_under_the_papers_protocol_are_a_row_of_their_own(multirun):
    paper = {"protocol": {"name": "paper", "budget_charge": "training"}}
    for seed, trials in TPE.items():
        write_study(multirun / "tpe" / "paper" / f"seed{seed}", "tpe", seed, trials[:2], paper)
    proc = report(multirun)
    rows = {r["method"]: r["studies"] for r in table(proc.stdout, "Methods")}
    assert rows == {"llm": "2", "tpe": "2", "tpe (paper)": "2"}
    pairs = {(r["method A"], r["method B"]) for r in table(proc.stdout, "Paired tests")}
    assert ("tpe", "tpe (paper)") in pairs or ("tpe (paper)", "tpe") in pairs


def test_seed_without_success_and_study_without_trials_do_not_break_mean_or_std(multirun):
    never_ok = [("default", "oom", None, 5, None), ("tpe", "crashed", None, 1, None)]
    write_study(multirun / "tpe" / "seed2", "tpe", 2, never_ok)
    running = write_study(multirun / "random" / "seed0", "random", 0, [])  # its first trial is still running
    with Journal(running / "journal.sqlite") as journal:  # the study holds its journal open while we read
        journal.start(PendingTrial(0, {"DEPTH": 1}, "default", started_at=1.8e9))
        proc = report(multirun)
    rows = {r["method"]: r for r in table(proc.stdout, "Methods")}
    assert list(rows) == ["llm", "tpe", "random"]  # no success: last
    assert rows["tpe"]["studies"] == "3 (1 without a success)"
    assert rows["tpe"]["best val_bpb (mean ± std)"] == best_cell([0.98, 0.97])  # over the studies with a success
    assert (rows["tpe"]["failed %"], rows["tpe"]["OOM %"]) == ("50.0", "30.0 (10.0 predicted)")  # 5, 3, 1 of 10
    random = rows["random"]
    assert (random["studies"], random["best val_bpb (mean ± std)"], random["failed %"], random["trials (total)"]) == (
        "1 (1 without a success)", "–", "–", "0")
    studies = {r["study"]: r for r in table(proc.stdout, "Studies")}
    assert studies["random/seed0"]["trials"] == "0 (+1 unfinished)" and studies["tpe/seed2"]["ok"] == "0"
    # tpe seed 2 (no success) has no llm partner, random's study has no trial: the same pair and ranks as before.
    pairs = {(r["method A"], r["method B"]): r["seeds paired"] for r in table(proc.stdout, "Paired tests")}
    assert pairs == {("llm", "tpe"): "2", ("llm", "random"): "0", ("tpe", "random"): "0"}
    ranks = {r["method"]: r for r in table(proc.stdout, "Anytime ranks")}
    assert list(ranks) == ["llm", "tpe"] and ranks["tpe"]["rank at 100 %"] == "2.00"
    assert (multirun / "convergence.png").stat().st_size > 10_000 and (multirun / "failures.png").is_file()


def test_plots_with_a_seed_that_never_succeeded(multirun, tmp_path):
    def trials(folder: Path):
        with Journal(folder / "journal.sqlite", readonly=True) as journal:
            return journal.trials()

    failed = trials(write_study(tmp_path / "all-failed", "tpe", 7, [("default", "oom", None, 5, None),
                                                                    ("tpe", "crashed", None, 3, None)]))  # fmt: skip
    studies = {"tpe": [trials(multirun / "tpe" / "seed0"), failed], "only failures": [failed], "none yet": [[]]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no all-NaN or empty-legend warnings leak out
        plot_convergence(studies, tmp_path / "convergence.png")
        plot_failures(studies, tmp_path / "failures.png")
    assert (tmp_path / "convergence.png").stat().st_size > 10_000
    assert (tmp_path / "failures.png").stat().st_size > 10_000


def test_a_corrupt_journal_is_skipped_with_one_warning(multirun):
    broken = multirun / "cmaes" / "seed0"
    broken.mkdir(parents=True)
    (broken / "journal.sqlite").write_bytes(b"this is not an SQLite file" * 100)
    proc = report(multirun)
    warning = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and str(broken / "journal.sqlite") in warning[0]
    assert "Traceback" not in proc.stderr
    assert [r["method"] for r in table(proc.stdout, "Methods")] == ["llm", "tpe"]


@pytest.mark.parametrize("case", ["missing", "no journal", "only corrupt"])
def test_bad_path_is_one_line_and_exit_2(case, tmp_path):
    path = tmp_path / "studies"
    if case != "missing":
        (path / "tpe" / "seed0").mkdir(parents=True)
    if case == "only corrupt":
        (path / "tpe" / "seed0" / "journal.sqlite").write_bytes(b"garbage" * 100)
    proc = run_cli("jaxhpo.report", str(path), timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    error = [line for line in proc.stderr.splitlines() if not line.startswith("warning:")]
    assert len(error) == 1 and error[0].startswith("error: ") and str(path) in error[0], proc.stderr
    assert {"missing": "does not exist", "no journal": "no journal.sqlite under",
            "only corrupt": "can be read"}[case] in error[0]  # fmt: skip
    assert not (path / "report.md").exists()
