"""The memory pre-flight and the compilation cache, on real runs of the trainer: a configuration that really runs
out of memory under the limit is refused after compiling only, one that fits trains; runs that differ only in
learning rates compile once; a trainer that dies on a refused allocation is an OOM."""

import json
import signal
import subprocess
import sys

import pytest

from jaxhpo.trial import LOG_FILE, _classify
from tests.conftest import run_cli

# Far past 3 GB: about 1.3 B float32 parameters plus Muon/Adam state.
TOO_BIG = ["model.depth=12", "model.aspect_ratio=256"]


def train(tmp_path, data_cache, *overrides: str) -> dict:
    proc = run_cli(
        "model.train", "model=tiny", "time_budget_s=1", "model.eval_tokens=4096", "memory_limit_gb=3",
        f"data.cache_dir={data_cache}", f"hydra.run.dir={tmp_path}", *overrides,
    )  # fmt: skip
    result = json.loads((tmp_path / "result.json").read_text())
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return result


@pytest.mark.parametrize("preflight", [False, True])
def test_a_configuration_that_really_ooms_is_refused_before_it_runs(preflight, tmp_path, data_cache):
    result = train(tmp_path, data_cache, *TOO_BIG, f"preflight={str(preflight).lower()}")
    assert result["status"] == "oom", result
    if preflight:  # refused after compiling: no step ran, nothing was allocated for the model
        assert result["predicted"] is True and result["error"].startswith("predicted out of memory")
        assert result["preflight"]["predicted"] > 3 and result["preflight"]["fits"] is False
        assert "num_steps" not in result
    else:  # without the check the same configuration really fails in XLA's allocator
        assert "predicted" not in result
        assert any(s in result["error"] for s in ("RESOURCE_EXHAUSTED", "Out of memory allocating")), result


def test_a_configuration_that_fits_passes_and_learning_rates_do_not_recompile(tmp_path, data_cache):
    cache = f"compile_cache_dir={tmp_path / 'xla_cache'}"
    first = train(tmp_path / "a", data_cache, cache, "optim.matrix_lr=0.04", "optim.embedding_lr=0.6")
    assert first["status"] == "ok" and first["preflight"]["fits"] is True
    assert first["preflight"]["predicted"] <= 3
    assert first["compile_cache"]["misses"] >= 4  # the initialization's two programs, the train and eval steps
    second = train(tmp_path / "b", data_cache, cache, "optim.matrix_lr=0.01", "optim.embedding_lr=0.2",
                   "optim.warmdown_ratio=0.3")  # fmt: skip
    assert second["status"] == "ok" and second["val_bpb"] != first["val_bpb"]
    # every program (the parameters: their kept copy) came from the cache, without even tracing them (model.programs)
    assert second["compile_cache"]["programs"] == {"hits": 4, "misses": 0}
    assert second["compile_cache"]["misses"] == 0
    assert second["compile_seconds"] < first["compile_seconds"]
    other_shape = train(tmp_path / "c", data_cache, cache, "model.depth=1")
    assert other_shape["compile_cache"]["programs"]["misses"] == 4  # a new shape: new programs


@pytest.mark.parametrize("last_words, status", [
    ("terminate called after throwing an instance of 'std::bad_alloc'\n  what():  std::bad_alloc\n", "oom"),
    ("Fatal Python error: Aborted\n", "crashed"),
])  # fmt: skip
def test_a_trainer_that_aborts_after_a_refused_allocation_ended_out_of_memory(last_words, status, tmp_path):
    """C++'s std::bad_alloc thrown on one of XLA's threads (compiling a large step under the address-space limit)
    aborts the trainer before result.json exists: that trial ran out of memory; another abort is a crash. The
    process here prints what libstdc++ prints, then really aborts."""
    with open(tmp_path / LOG_FILE, "w") as log:
        code = f"import os, sys; sys.stderr.write({last_words!r}); sys.stderr.flush(); os.abort()"
        proc = subprocess.run([sys.executable, "-c", code], stderr=log)
    outcome = _classify(tmp_path, proc.returncode, 60.0, 0.0, 1.0)
    assert proc.returncode == -signal.SIGABRT and outcome.status == status
    assert outcome.error.startswith("out of memory: killed by SIGABRT: " if status == "oom" else "killed by SIGABRT: ")
    assert last_words.splitlines()[0] in outcome.error  # what the process said last
