"""The pre-flight's verdicts by shape (jaxhpo.footprints): keyed by what the memory depends on and nothing else,
kept only for shapes that do not fit, read by a later study sharing the compilation cache -- its trial of a known
shape ends at once, and its proposer's failure model gives that shape p_fail 1."""

import dataclasses

from jaxhpo.feasibility import FailureModel
from jaxhpo.footprints import FootprintCache, shape_key
from jaxhpo.journal import Journal
from jaxhpo.proposers import make_proposer
from model.config import TrainConfig
from tests.conftest import run_cli
from tests.test_proposers import SPACE
from tests.test_study import FAST

NO_FIT = {"predicted": True, "preflight": {"predicted": 3.75, "limit": 3.0, "fits": False}}


def config(**changes) -> TrainConfig:
    cfg = TrainConfig()
    model = {k: v for k, v in changes.items() if hasattr(cfg.model, k)}
    optim = {k: v for k, v in changes.items() if hasattr(cfg.optim, k)}
    rest = {k: v for k, v in changes.items() if k not in model and k not in optim}
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model),
                               optim=dataclasses.replace(cfg.optim, **optim), **rest)  # fmt: skip


def test_the_key_is_the_shapes_and_not_the_learning_rates():
    base = shape_key(config())
    assert shape_key(config(matrix_lr=0.01, embedding_lr=1.5, warmdown_ratio=0.2, seed=3)) == base
    for other in (dict(depth=4), dict(device_batch_size=32), dict(window_pattern="LLLL"), dict(muon="optax"),
                  dict(memory_limit_gb=3.0), dict(compute_dtype="bfloat16")):  # fmt: skip
        assert shape_key(config(**other)) != base, other


def test_only_shapes_that_do_not_fit_are_kept(tmp_path):
    cache = FootprintCache(tmp_path / "footprints.sqlite")
    fits = {"preflight": {"predicted": 1.0, "limit": 3.0, "fits": True}}
    cache.record(config(depth=2), fits, "trial 1")
    cache.record(config(depth=3), {"status": "oom", "error": "RESOURCE_EXHAUSTED"}, "trial 2")  # not a prediction
    cache.record(config(depth=12), NO_FIT, "trial 3")
    assert cache.predicted_oom(config(depth=2)) is None and cache.predicted_oom(config(depth=3)) is None
    assert cache.predicted_oom(config(depth=12, matrix_lr=0.1)) == dict(NO_FIT["preflight"], seen="trial 3")
    assert FootprintCache(None).predicted_oom(config(depth=12)) is None  # no cache: nothing known
    assert FootprintCache(None).empty() and FootprintCache(tmp_path / "new.sqlite").empty() and not cache.empty()


def test_an_unusable_file_is_reported_once_and_the_study_goes_on(tmp_path):
    (tmp_path / "footprints.sqlite").write_bytes(b"not a database" * 100)
    lines: list[str] = []
    cache = FootprintCache(tmp_path / "footprints.sqlite", warn=lines.append)
    assert cache.predicted_oom(config()) is None
    cache.record(config(depth=12), NO_FIT, "trial 3")
    assert cache.predicted_oom(config(depth=12)) is None
    assert len(lines) == 1 and "is not usable" in lines[0] and "going on without it" in lines[0]


def test_the_failure_model_gives_what_is_known_to_fail_p_fail_1():
    configs = [SPACE.default() | {"DEPTH": 4 + i} for i in range(3)]
    model = FailureModel(SPACE).fit([])  # no trial: the classifier knows nothing
    model.known_to_fail = lambda c: c["DEPTH"] == 5
    assert list(model.p_fail(configs)) == [0.0, 1.0, 0.0]
    # random search draws again where its first draw is known to fail, and only there
    deep = lambda c: c["DEPTH"] >= 8  # noqa: E731
    first = [make_proposer("random", SPACE, s, avoid_failures=False).ask([]).params for s in range(30)]
    picked = []
    for s in range(30):
        p = make_proposer("random", SPACE, s)
        p.failure_model.known_to_fail = deep
        picked.append(p.ask([]))
    assert sum(map(deep, first)) >= 5 and not any(deep(q.params) for q in picked)
    assert [q.params for q, f in zip(picked, first) if not deep(f)] == [f for f in first if not deep(f)]
    assert sum("rejected" in q.meta for q in picked) == sum(map(deep, first))


def test_a_later_study_sharing_the_compile_cache_knows_the_shape_does_not_fit(tmp_path, data_cache):
    # A space of learning rates over a model far past 3 GB (about 1.3 B parameters): every configuration is one
    # shape. The first study's trial 0 is refused by the pre-flight after compiling; the second study's trials end
    # at once, unstarted.
    (tmp_path / "conf/space").mkdir(parents=True)
    (tmp_path / "conf/space/lrs.yaml").write_text(
        "defaults:\n  - space_schema\n  - _self_\n\nname: lrs\nparams:\n"
        "  MATRIX_LR: {type: float, key: optim.matrix_lr, low: 0.005, high: 0.2, log: true, default: 0.04}\n"
        "  EMBEDDING_LR: {type: float, key: optim.embedding_lr, low: 0.01, high: 2.0, log: true, default: 0.6}\n"
    )  # fmt: skip
    args = [f"--config-dir={tmp_path}/conf", "+method=random", "space=lrs", "model.depth=12", "model.aspect_ratio=256",
            *FAST, "trial.budget=steps", "trial.budget_steps=1", "trial.memory_limit_gb=3",
            f"data.cache_dir={data_cache}", f"trial.compile_cache_dir={tmp_path}/xla_cache"]  # fmt: skip
    first = run_cli("jaxhpo", *args, "study.max_trials=1", f"hydra.run.dir={tmp_path}/a")
    assert first.returncode == 0, first.stderr[-3000:]
    with Journal(tmp_path / "a/journal.sqlite", readonly=True) as journal:
        [seen] = journal.trials()
    assert seen.status == "oom" and seen.result["predicted"] and "cached" not in seen.result
    assert (tmp_path / "xla_cache/footprints.sqlite").exists()
    second = run_cli("jaxhpo", *args, "study.max_trials=3", f"hydra.run.dir={tmp_path}/b")
    assert second.returncode == 0, second.stderr[-3000:]
    with Journal(tmp_path / "b/journal.sqlite", readonly=True) as journal:
        trials = journal.trials()
    assert [t.status for t in trials] == ["oom"] * 3
    for t in trials:
        assert t.result["cached"] and t.wall_seconds == 0 and f"trial 0 of {tmp_path}/a" in t.error, t.error
        assert not (tmp_path / f"b/trials/{t.number:04d}").exists()  # no process ran
    # the proposer's failure model read the cache: every draw was known to fail (without it: no rejection)
    assert all(t.meta.get("rejected") == 20 and t.meta.get("p_fail") == 1.0 for t in trials[1:]), trials[1].meta
