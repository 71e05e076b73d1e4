"""The trainer end to end: it learns, checkpoints, reproduces, and turns every failure into a result."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

from model.config import ModelConfig, TrainConfig
from model.data import DataConfig, load_corpus, val_batches
from model.evaluate import evaluate_run
from model.train import train
from tests.conftest import REPO, run_cli

TINY = OmegaConf.load(REPO / "hydra_configs/model/tiny.yaml")


def tiny_config(data_cache: str, layout: str = "windows", **overrides) -> TrainConfig:
    """model=tiny on the standard library, read as the default study reads it (windows) unless `layout` says; its
    programs in the session's compilation cache, as the study tests' (a shape compiled once loads after)."""
    model = ModelConfig(**{**OmegaConf.to_container(TINY), **overrides.pop("model", {})})
    overrides.setdefault("compile_cache_dir", f"{data_cache}/xla_cache")
    return TrainConfig(model=model, data=DataConfig(cache_dir=data_cache, layout=layout), **overrides)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_cache):
    out = tmp_path_factory.mktemp("run")
    # A fixed number of steps, so that what it learns does not depend on how busy the machine is.
    cfg = tiny_config(data_cache, max_steps=40, time_budget_s=600.0)
    return cfg, out, train(cfg, out)


def test_short_run_learns_well_below_uniform(trained, data_cache):
    cfg, out, result = trained
    assert result["status"] == "ok", result
    corpus = load_corpus(DataConfig(cache_dir=data_cache), cfg.model.vocab_size)
    val = np.asarray(corpus.val_tokens[: cfg.model.eval_tokens])
    counted = corpus.token_bytes[val] > 0
    uniform_bpb = math.log2(cfg.model.vocab_size) * counted.sum() / corpus.token_bytes[val].sum()
    assert result["val_bpb"] < 0.6 * uniform_bpb, (result["val_bpb"], uniform_bpb)
    assert result["num_steps"] == 40 and result["total_tokens"] == 40 * cfg.model.total_batch_size
    # max_steps under budget=time is a budget in steps: the 600 s are no limit
    assert (result["budget"], result["budget_value"], result["budget_steps"]) == ("steps", 40, 40)
    assert result["total_seconds"] > result["training_seconds"]
    for key in ("peak_memory_mb", "tokens_per_second", "flops_per_second", "num_params", "compile_seconds"):
        assert result[key] > 0, key
    assert json.loads((out / "result.json").read_text()) == result


def test_packed_rows_train_and_are_scored_on_packed_rows(tmp_path, data_cache):
    result = train(tiny_config(data_cache, "packed", max_steps=20, time_budget_s=600.0), tmp_path)
    assert result["status"] == "ok" and result["num_steps"] == 20, result
    corpus = load_corpus(DataConfig(cache_dir=data_cache), TINY.vocab_size)
    rows = np.concatenate(list(val_batches(corpus.val_tokens, TINY.eval_batch_size, TINY.seq_len, TINY.eval_tokens,
                                           "packed")))  # fmt: skip
    nbytes = corpus.token_bytes[rows[:, 1:]]
    uniform_bpb = math.log2(TINY.vocab_size) * (nbytes > 0).sum() / nbytes.sum()  # what guessing scores there
    assert result["val_bpb"] < 0.8 * uniform_bpb, (result["val_bpb"], uniform_bpb)


def test_training_stops_when_the_time_budget_is_spent(tmp_path, data_cache):
    result = train(tiny_config(data_cache, time_budget_s=4.0, save_checkpoint=False), tmp_path)
    assert result["status"] == "ok", result
    assert (result["budget"], result["budget_value"], result["budget_steps"]) == ("time", 4.0, None)
    step = result["training_seconds"] / result["num_steps"]
    # The clock is read after each step: the run ends within one step of the budget, compilation not counted.
    assert 4.0 <= result["training_seconds"] < 4.0 + 2 * step + 1.0
    assert result["compile_seconds"] > 0 and result["total_seconds"] > result["training_seconds"] + result["compile_seconds"]


def test_checkpoint_restores_to_the_same_val_bpb(trained):
    _, out, result = trained
    assert evaluate_run(out) == pytest.approx(result["val_bpb"], abs=2e-6)


def test_same_seed_same_run(tmp_path, data_cache):
    runs = [
        train(tiny_config(data_cache, max_steps=4, seed=s, save_checkpoint=False), tmp_path / f"{i}")
        for i, s in enumerate([7, 7, 8])
    ]
    assert runs[0]["final_train_loss"] == runs[1]["final_train_loss"]
    assert runs[0]["val_bpb"] == runs[1]["val_bpb"]
    assert runs[0]["val_bpb"] != runs[2]["val_bpb"]


def test_nan_loss_ends_as_diverged(tmp_path, data_cache):
    huge = dict(embedding_lr=1e30, unembedding_lr=1e30, matrix_lr=1e30, scalar_lr=1e30)
    cfg = tiny_config(data_cache, max_steps=30, save_checkpoint=False)
    cfg.optim.__dict__.update(huge)
    result = train(cfg, tmp_path)
    assert result["status"] == "diverged", result
    assert "loss" in result["error"]
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize(
    "override, key",
    [("model.window_pattern=SXL", "model.window_pattern"), ("model.width=200", "model.head_dim")],
)
def test_invalid_hyperparameters_are_refused_in_one_line(tmp_path, override, key):
    proc = run_cli("model.train", override, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and key in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    assert json.loads((tmp_path / "result.json").read_text())["status"] == "invalid"


def test_ynnpack_allocation_failures_count_as_oom_only_under_a_memory_limit():
    # XLA:CPU's YNNPACK kernels report a refused allocation as a generic error (seen under RLIMIT_AS).
    code = (
        "import resource; from model.device import is_oom; e = RuntimeError('INTERNAL: YNNPACK operation failed');"
        "print(is_oom(e)); resource.setrlimit(resource.RLIMIT_AS, (64 << 30, 64 << 30)); print(is_oom(e))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "True"]


KEEP_CHECK = """
import resource, numpy as np
from model import device
applied = device.keep_freed_host_memory()
def faults_to_fill():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(16 * 2**20, np.float32)  # 64 MB: above glibc's largest default mmap threshold
    a.fill(1.0)
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
first = faults_to_fill()
print(applied, first, min(faults_to_fill() for _ in range(3)))
"""


def test_a_cpu_run_reuses_freed_host_memory_instead_of_faulting_it_in_again():
    out = subprocess.run([sys.executable, "-c", KEEP_CHECK], capture_output=True, text=True, cwd=REPO, check=True)
    applied, first, again = out.stdout.split()
    if applied != "True":
        pytest.skip("this C library has no mallopt")
    assert int(first) > 0 and int(again) < int(first) / 4
