"""The cache of compiled programs keyed by configuration (model.programs): what it leaves out of its key really
does not change the programs (the initialization's two and the two steps), a run that loads its programs (and its
kept initial parameters) trains exactly as one that compiled them, a damaged entry is compiled again, and steps
XLA's own cache handed back are never stored."""

import dataclasses
import json
import shutil

import model.train
from model.programs import FOLDER, PROGRAM_INPUTS, ProgramCache, _flat
from model.train import train
from tests.conftest import run_cli
from tests.test_train import tiny_config


class Lowered(Exception):
    """Raised once both steps are lowered: the run stops before anything runs."""


def lowered_programs(monkeypatch, tmp_path, cfg) -> tuple[str, dict[str, str]]:
    """The key `cfg`'s run computes and the text of the three programs it lowers, read from a real run."""
    seen: dict = {}

    class Recording(ProgramCache):
        def arrays(self, name):
            return None  # every program is lowered, even where the session's cache keeps the parameters

        def get(self, name, lower):
            seen["key"] = self.key
            lowered = lower()
            seen[name] = lowered.as_text()
            if name == "eval":
                raise Lowered
            # the rest is lowered against the initialization's outputs
            return lowered.compile() if name in ("params", "opt_state") else None

    monkeypatch.setattr(model.train, "ProgramCache", Recording)
    result = train(cfg, tmp_path)
    assert result["status"] == "crashed" and "Lowered" in result["error"], result
    return seen.pop("key"), seen


def test_every_program_input_is_a_setting():
    settings = _flat(dataclasses.asdict(tiny_config("/tmp")))
    assert PROGRAM_INPUTS <= settings.keys(), PROGRAM_INPUTS - settings.keys()


def test_what_the_key_leaves_out_does_not_change_the_programs(monkeypatch, tmp_path, data_cache):
    base = tiny_config(data_cache, max_steps=3)
    # Every setting the key leaves out, changed at once to another valid value; but the cache folder, which JAX
    # keeps one of in a process (changing it would change this test process for the tests after it).
    changed = tiny_config(data_cache, budget="flops", budget_flops=9e11, max_steps=None, time_budget_s=7.0, seed=5,
                          budget_tokens=10**6, save_checkpoint=False, log_every_s=3.0, preflight=False, rungs=[0.5],
                          model={"eval_tokens": 8192})  # fmt: skip
    changed.optim = dataclasses.replace(changed.optim, embedding_lr=0.1, unembedding_lr=0.01, matrix_lr=0.02,
                                        scalar_lr=0.3, weight_decay=0.0, warmup_ratio=0.1, warmdown_ratio=0.3,
                                        final_lr_frac=0.1)  # fmt: skip
    differs = {k for k, v in _flat(dataclasses.asdict(changed)).items()
               if v != _flat(dataclasses.asdict(base))[k]}  # fmt: skip
    assert differs == PROGRAM_INPUTS - {"compile_cache_dir"}  # and nothing else
    key, programs = lowered_programs(monkeypatch, tmp_path / "a", base)
    assert lowered_programs(monkeypatch, tmp_path / "b", changed) == (key, programs)
    # ...while a setting the key holds changes both: the comparison above can fail.
    other_key, other = lowered_programs(monkeypatch, tmp_path / "c", tiny_config(data_cache, max_steps=3,
                                                                                 model={"depth": 1}))  # fmt: skip
    assert other_key != key and other["train"] != programs["train"] and other["params"] != programs["params"]


def cli_train(out, data_cache, cache, *overrides: str) -> dict:
    """A run in its own process, as a trial is (this process keeps the programs it loaded: see model.programs)."""
    run_cli("model.train", "model=tiny", "max_steps=3", "save_checkpoint=false", f"data.cache_dir={data_cache}",
            f"compile_cache_dir={cache}", f"hydra.run.dir={out}", *overrides)  # fmt: skip
    return json.loads((out / "result.json").read_text())


def test_a_run_that_loads_its_steps_trains_as_one_that_compiled_them(tmp_path, data_cache):
    cache = tmp_path / "cache"
    runs = [cli_train(tmp_path / str(i), data_cache, cache, *args) for i, args in enumerate([[], [], ["seed=3"], []])]
    assert [r["status"] for r in runs] == ["ok"] * 4, runs
    # The second run draws its initial parameters with the first one's program, and keeps them (a shape seen twice)
    # for the runs after it: the last reads them and trains the same; seed 3 draws and keeps its own.
    assert [r["compile_cache"]["programs"] for r in runs] == [{"hits": 0, "misses": 4}] + [{"hits": 4, "misses": 0}] * 3
    assert [r["compile_cache"]["initial_params"] for r in runs] == ["drawn", "drawn", "drawn", "read"]
    assert runs[3]["val_bpb"] == runs[0]["val_bpb"] and runs[3]["final_train_loss"] == runs[0]["final_train_loss"]
    assert sorted(p.name.split("-", 1)[1] for p in (cache / FOLDER).glob("*.pkl")) == [
        "eval.pkl", "opt_state.pkl", "params-seed0.pkl", "params-seed3.pkl", "params.pkl", "train.pkl"]
    assert runs[1]["val_bpb"] == runs[0]["val_bpb"] and runs[1]["final_train_loss"] == runs[0]["final_train_loss"]
    assert runs[2]["val_bpb"] != runs[0]["val_bpb"]  # another seed: same programs, other data and initial values
    for key in ("train_peak", "eval_peak", "state"):  # XLA's memory analysis survives the round trip
        assert runs[1]["preflight"][key] == runs[0]["preflight"][key], key
    # a damaged entry is compiled again (here XLA's cache has it)
    for damaged in ("eval", "params-seed0"):
        (entry,) = (cache / FOLDER).glob(f"*-{damaged}.pkl")
        entry.write_bytes(b"not a program")
    again = cli_train(tmp_path / "damaged", data_cache, cache)
    assert again["status"] == "ok" and again["val_bpb"] == runs[0]["val_bpb"], again
    assert again["compile_cache"]["programs"] == {"hits": 3, "misses": 1}  # the parameters drawn by their program
    (entry,) = (cache / FOLDER).glob("*-params-seed0.pkl")  # ...and kept again
    assert ProgramCache(cache, entry.name.split("-")[0], {}).arrays("params-seed0") is not None
    # Steps that XLA's cache hands back are not stored (a copy of a loaded program would not run), and the run
    # after that one traces again and trains the same.
    shutil.rmtree(cache / FOLDER)
    traced = [cli_train(tmp_path / f"traced{i}", data_cache, cache) for i in range(2)]
    for run in traced:
        assert run["status"] == "ok" and run["val_bpb"] == runs[0]["val_bpb"], run
        assert run["compile_cache"]["hits"] == 4 and run["compile_cache"]["programs"] == {"hits": 0, "misses": 4}
    assert not list((cache / FOLDER).glob("*.pkl"))  # nor the parameters, whose program did not come from here


def test_arrays_are_kept_up_to_their_size_limit(tmp_path, monkeypatch):
    import numpy as np

    import model.programs

    cache = ProgramCache(tmp_path, "key", {})
    cache.keep_arrays("small", {"w": np.arange(6.0)})
    assert np.array_equal(cache.arrays("small")["w"], np.arange(6.0)) and cache.counts() == {"hits": 1, "misses": 0}
    monkeypatch.setattr(model.programs, "ARRAYS_MAX_BYTES", 40)
    cache.keep_arrays("large", {"w": np.arange(6.0)})  # 48 bytes: drawn again by each run, never written
    assert cache.arrays("large") is None and not list(tmp_path.glob(f"{FOLDER}/*large*"))
    assert ProgramCache(None, "key", {}).arrays("small") is None  # no folder, nothing kept
