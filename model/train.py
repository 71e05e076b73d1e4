"""Train the GPT for a fixed budget and score it in val_bpb: `train(cfg, out_dir) -> result`.

As in autoresearch, the budget is by default *training* time (`budget=time`): the train and eval steps are compiled
ahead of time, against abstract shapes, and compilation is not charged. A budget in FLOPs, tokens or steps
(`budget=flops|tokens|steps`) is instead a number of optimizer steps fixed before training, so that the result
does not depend on how busy the machine is; one too small for a single step is refused (`invalid`). The
learning-rate schedule's progress counts in the budget's unit (`schedule_progress`).

Before any parameter is allocated, the memory pre-flight (`model.preflight`) reads XLA's memory analysis of the
compiled steps; a run predicted not to fit its memory limit stops there, as `oom` with `predicted: true`. Compiled
programs go to a persistent cache (`compile_cache_dir`) that concurrent runs share: learning rates and schedule
values are inputs of the step, not constants, so runs that differ only in them compile once, and the steps are
also kept under a key of the configuration (`model.programs`), so that such runs load them without tracing them.

Every run ends with `result.json` in its folder, whatever happens: `ok`, `oom` (XLA's RESOURCE_EXHAUSTED, or
predicted), `diverged` (NaN loss or loss > 100), `invalid` (refused before compiling) or `crashed`.

CLI: `python -m model.train model=tiny time_budget_s=30`, or `budget=flops budget_flops=5e11` (Hydra; configs
in hydra_configs/).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
import time
import traceback
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from omegaconf import OmegaConf

from model import device, preflight
from model.config import (
    BUDGET_KEYS,
    ConfigError,
    TrainConfig,
    budget_steps,
    budget_unit,
    get_field,
    grad_accum_steps,
    validate,
)
from model.data import load_corpus, train_batches, val_batches
from model.evaluate import evaluate_bpb, make_eval_step, save_params
from model.gpt import GPT, flops_per_token, param_count, token_losses
from model.optim import NUMBERS, build_optimizer
from model.programs import ProgramCache, program_key
from model.progress import Rungs, TrainProgress

DIVERGED_LOSS = 100.0
RESULT_FILE = "result.json"


class Diverged(RuntimeError):
    """The loss became NaN or exceeded DIVERGED_LOSS."""


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformationExtraArgs):
    """(params, opt_state, batch (A, B, T+1), progress) -> (params, opt_state, mean loss).

    Gradients are averaged over the A micro-batches with a scan, so only one micro-batch's activations are
    alive at a time: TOTAL_BATCH_SIZE is reached by accumulation, as in autoresearch.
    """

    def loss_fn(params, tokens):
        return token_losses(nnx.merge(graphdef, params), tokens).mean()

    def train_step(params, opt_state, batch, progress):
        def micro(grad_sum, tokens):
            loss, grads = jax.value_and_grad(loss_fn)(params, tokens)
            return jax.tree.map(jnp.add, grad_sum, grads), loss

        zeros = jax.tree.map(jnp.zeros_like, params)
        grad_sum, losses = jax.lax.scan(micro, zeros, batch)
        grads = jax.tree.map(lambda g: g / batch.shape[0], grad_sum)
        updates, opt_state = tx.update(grads, opt_state, params, progress=progress)
        return optax.apply_updates(params, updates), opt_state, losses.mean()

    return train_step


def schedule_progress(step: int, steps: int | None, training_seconds: float, time_budget_s: float) -> float:
    """The learning-rate schedule's progress at optimizer step `step` (0-based): the share of the budget spent
    before it. With a number of steps fixed by the budget, step / steps (the share of its FLOPs or tokens too), which
    reaches exactly 1 once the last step is done; under a time budget, the share of the training time."""
    return step / steps if steps is not None else training_seconds / time_budget_s


def train(cfg: TrainConfig, out_dir: str | Path) -> dict:
    """Run one training; always writes OUT_DIR/result.json and returns the same dict."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    result: dict = {"status": "crashed"}
    try:
        (out_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
        validate(cfg)
        result.update(_train(cfg, out_dir, t_start, result))
        result["status"] = "ok"
    except ConfigError as e:
        result.update(status="invalid", error=str(e))
    except Diverged as e:
        result.update(status="diverged", error=str(e))
    except preflight.PredictedOOM as e:
        result.update(status="oom", error=str(e), predicted=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes a result, never a lost run
        status = "oom" if device.is_oom(e) else "crashed"
        result.update(status=status, error=_first_line(e))
        if status == "crashed":
            traceback.print_exc()
    result["total_seconds"] = round(time.time() - t_start, 3)
    (out_dir / RESULT_FILE).write_text(json.dumps(result, indent=2) + "\n")
    return result


def _train(cfg: TrainConfig, out_dir: Path, t_start: float, result: dict) -> dict:
    unit, steps = budget_unit(cfg), budget_steps(cfg)
    result.update(budget=unit, budget_value=get_field(cfg, BUDGET_KEYS[unit]), budget_steps=steps)
    backend = device.configure_memory(cfg.memory_fraction, cfg.memory_limit_gb, cfg.gpu_memory_fraction)
    if backend == "cpu":
        device.keep_freed_host_memory()
    cache = device.enable_compile_cache(cfg.compile_cache_dir)
    m = cfg.model
    dtype = device.compute_dtype(cfg.compute_dtype)
    corpus = load_corpus(cfg.data, m.vocab_size)

    tx = build_optimizer(cfg.optim, m.model_dim)

    # The initial state comes from two programs, loaded like the steps, instead of the hundreds of small ones that
    # building it eagerly runs (half a second even when each comes from the cache): the parameters from the seed
    # (or from the cache's copy of them, see model.programs), the optimizer state from them and the optimizer's
    # numbers, which are its inputs.
    def init_params(seed: jax.Array):
        return nnx.split(GPT(m, dtype=dtype, rngs=nnx.Rngs(jax.random.key(seed))), nnx.Param)[1]

    def init_opt_state(params, numbers: dict[str, jax.Array]):
        return build_optimizer(dataclasses.replace(cfg.optim, **numbers), m.model_dim).init(params)

    @functools.cache
    def graphdef() -> nnx.GraphDef:  # what the steps are traced from, needed only when one is not cached
        return nnx.graphdef(nnx.eval_shape(lambda: GPT(m, dtype=dtype, rngs=nnx.Rngs(0))))

    seed, numbers = np.uint32(cfg.seed), {k: np.float32(getattr(cfg.optim, k)) for k in NUMBERS}
    shapes = functools.partial(jax.tree.map, lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype))
    accum = grad_accum_steps(m)
    batch_shape = jax.ShapeDtypeStruct((accum, m.device_batch_size, m.seq_len + 1), jnp.int32)
    eval_shape = jax.ShapeDtypeStruct((m.eval_batch_size, m.seq_len + 1), jnp.int32)
    t_compile = time.time()
    programs = ProgramCache(cfg.compile_cache_dir, program_key(cfg, dtype, corpus.key), cache)
    params_name = f"params-seed{cfg.seed}"  # the parameters are the key's and the seed's
    kept_params = programs.arrays(params_name)
    if kept_params is None:
        draw_params = programs.get("params", lambda: jax.jit(init_params).lower(seed))
    abstract_params = shapes(draw_params.out_info if kept_params is None else kept_params)
    init_opt = programs.get("opt_state", lambda: jax.jit(init_opt_state).lower(abstract_params, numbers))
    abstract_opt_state = shapes(init_opt.out_info)
    step_fn = programs.get("train", lambda: jax.jit(make_train_step(graphdef(), tx), donate_argnums=(0, 1)).lower(
        abstract_params, abstract_opt_state, batch_shape, jax.ShapeDtypeStruct((), jnp.float32)))
    eval_step = programs.get("eval", lambda: make_eval_step(graphdef(), corpus.token_bytes).lower(
        abstract_params, eval_shape))
    # Recorded now, not returned at the end: a run that fails later (an OOM) still says where its time went.
    result["setup_seconds"] = round(t_compile - t_start, 3)
    result["compile_seconds"] = round(time.time() - t_compile, 3)
    # XLA's cache: the programs when they were not in ours
    result["compile_cache"] = {**cache, "programs": programs.counts(),
                               "initial_params": "drawn" if kept_params is None else "read"}  # fmt: skip
    footprint = preflight.footprint(
        step_fn, eval_step, abstract_params, abstract_opt_state, preflight.memory_limit_bytes(cfg.memory_limit_gb)
    )
    result["preflight"] = footprint.as_dict()  # recorded with preflight off too: the calibration compares it
    if cfg.preflight and not footprint.fits:
        raise preflight.PredictedOOM(footprint.message())

    # Waited for: a refused allocation raises here, as the OOM it is, not later from wherever memory runs out next.
    if kept_params is None:
        params = draw_params(seed)
        if "params" in programs.loaded:  # a shape seen before: likely to come again
            programs.keep_arrays(params_name, params)
    else:
        params = jax.device_put(kept_params)
    params, opt_state = jax.block_until_ready((params, init_opt(params, numbers)))

    batches = train_batches(corpus.train_tokens, accum * m.device_batch_size, m.seq_len, cfg.seed, cfg.data.layout)
    # Made before training, so that a held-out split too small for the evaluation is refused before the budget
    # is spent rather than after.
    held_out = val_batches(corpus.val_tokens, m.eval_batch_size, m.seq_len, m.eval_tokens, cfg.data.layout)
    rungs = Rungs(cfg.rungs, out_dir)
    # A rung scores the first quarter of the evaluation set: a pruner compares trials at a rung, and this costs a
    # quarter of the final evaluation each time.
    rung_batches = list(val_batches(corpus.val_tokens, m.eval_batch_size, m.seq_len, max(1, m.eval_tokens // 4),
                                    cfg.data.layout)) if cfg.rungs else []  # fmt: skip
    tokens_per_step = accum * m.device_batch_size * m.seq_len
    progress_bar = TrainProgress(cfg.time_budget_s, steps, cfg.log_every_s)
    training_seconds, step, loss = 0.0, 0, float("nan")
    with progress_bar:
        while (step < steps) if steps is not None else (training_seconds < cfg.time_budget_s):
            t0 = time.perf_counter()
            batch = next(batches).reshape(batch_shape.shape)
            progress = schedule_progress(step, steps, training_seconds, cfg.time_budget_s)
            params, opt_state, loss_arr = step_fn(params, opt_state, batch, np.float32(progress))
            loss = float(loss_arr)  # waits for the step: the clock below measures real work
            training_seconds += time.perf_counter() - t0
            step += 1
            if not math.isfinite(loss) or loss > DIVERGED_LOSS:
                raise Diverged(f"loss {loss} at step {step}")
            progress_bar.update(step, loss, step * tokens_per_step / training_seconds, training_seconds)
            if cfg.rungs and rungs.due(done := schedule_progress(step, steps, training_seconds, cfg.time_budget_s)):
                value = evaluate_bpb(eval_step, params, rung_batches)  # outside training_seconds, as the final one
                while rungs.due(done):
                    rungs.report(step, value, loss, training_seconds)

    t_eval = time.time()
    val_bpb = evaluate_bpb(eval_step, params, held_out)
    eval_seconds = time.time() - t_eval
    if cfg.save_checkpoint:
        save_params(out_dir, params)

    tokens = step * tokens_per_step
    flops = flops_per_token(m) * tokens
    flops_per_s = flops / training_seconds
    peak = device.peak_flops()
    return {
        "val_bpb": round(val_bpb, 6),
        "training_seconds": round(training_seconds, 3),
        "eval_seconds": round(eval_seconds, 3),
        "peak_memory_mb": round(device.peak_memory_bytes() / 2**20, 1),
        "tokens_per_second": round(tokens / training_seconds),
        "flops_per_second": float(f"{flops_per_s:.4g}"),
        "mfu_percent": round(100 * flops_per_s / peak, 2) if peak else None,
        "total_tokens": tokens,
        "total_flops": float(f"{flops:.4g}"),
        "num_steps": step,
        "num_params": param_count(m),
        "final_train_loss": round(loss, 6),
        "backend": backend,
        "compute_dtype": str(dtype),
        **({"rungs": rungs.reports} if cfg.rungs else {}),
    }


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:2000]


def summary(result: dict) -> str:
    """The `key: value` block printed at the end of a run (autoresearch's format)."""
    return "---\n" + "\n".join(f"{k + ':':<20}{v}" for k, v in result.items())


def main(cfg) -> int:
    """Hydra entry: convert the config, train in Hydra's run folder, print the summary."""
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    result = train(OmegaConf.to_object(cfg), out_dir)
    print(summary(result))
    print(f"run folder: {out_dir}", file=sys.stderr)
    if result["status"] == "invalid":
        print(f"error: {result['error']}", file=sys.stderr)
        return 2
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    import hydra

    hydra_main = hydra.main(config_path="pkg://hydra_configs", config_name="train", version_base=None)(
        lambda cfg: sys.exit(main(cfg))
    )
    hydra_main()
