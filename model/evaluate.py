"""val_bpb: held-out bits per byte, the tokenizer-independent score every trial is ranked by.

val_bpb = Σ cross-entropy (nats) / (ln 2 × Σ UTF-8 bytes), both sums over the evaluated target tokens, special
tokens (0 bytes) excluded from both. The held-out rows (in the run's `data.layout`) and their count are fixed,
so runs compare.

Also: saving trained parameters with orbax, and restoring a run folder to score it again
(`python -m model.evaluate RUN_DIR`).
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from model.device import compute_dtype
from model.gpt import GPT, token_losses

CHECKPOINT_DIR = "checkpoint"


def bpb_sums(losses: jax.Array, targets: jax.Array, token_bytes: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(Σ nats, Σ bytes) over targets with a non-zero byte length: the two halves of val_bpb."""
    nbytes = token_bytes[targets]
    counted = nbytes > 0
    return jnp.sum(jnp.where(counted, losses, 0.0)), jnp.sum(nbytes)


def bits_per_byte(nats: float, nbytes: float) -> float:
    return nats / (math.log(2) * nbytes)


def make_eval_step(graphdef: nnx.GraphDef, token_bytes: np.ndarray):
    """A jitted (params, batch (B, T+1)) -> (Σ nats, Σ bytes)."""
    token_bytes = jnp.asarray(token_bytes, jnp.int32)

    @jax.jit
    def eval_step(params, batch):
        losses = token_losses(nnx.merge(graphdef, params), batch)
        return bpb_sums(losses, batch[:, 1:], token_bytes)

    return eval_step


def evaluate_bpb(eval_step, params, batches) -> float:
    """val_bpb over an iterable of held-out batches; sums accumulate in float64 on the host."""
    nats = nbytes = 0.0
    for batch in batches:
        n, b = eval_step(params, batch)
        nats, nbytes = nats + float(n), nbytes + float(b)
    return bits_per_byte(nats, nbytes)


def save_params(run_dir: Path, params) -> Path:
    """Write the parameters with orbax into RUN_DIR/checkpoint."""
    import orbax.checkpoint as ocp

    logging.getLogger("absl").setLevel(logging.WARNING)  # orbax narrates every save step at INFO
    path = (Path(run_dir) / CHECKPOINT_DIR).absolute()
    with ocp.StandardCheckpointer() as ckpt:
        ckpt.save(path, nnx.to_pure_dict(params), force=True)
    return path


def restore_params(run_dir: Path, abstract_params):
    """Read RUN_DIR/checkpoint back into the structure of `abstract_params` (an nnx.State of Params)."""
    import orbax.checkpoint as ocp

    path = (Path(run_dir) / CHECKPOINT_DIR).absolute()
    with ocp.StandardCheckpointer() as ckpt:
        pure = ckpt.restore(path, nnx.to_pure_dict(abstract_params))
    nnx.replace_by_pure_dict(abstract_params, pure)
    return abstract_params


def evaluate_run(run_dir: str | Path, layout: str | None = None) -> float:
    """Restore a finished run from its folder (config.yaml + checkpoint) and compute val_bpb again, on the held-out
    rows in `layout` (None: the run's own data.layout; another one compares runs trained on different layouts)."""
    from model.config import load_config
    from model.data import load_corpus, val_batches

    run_dir = Path(run_dir)
    cfg = load_config(run_dir / "config.yaml")
    corpus = load_corpus(cfg.data, cfg.model.vocab_size)
    dtype = compute_dtype(cfg.compute_dtype)
    abstract = nnx.eval_shape(lambda: GPT(cfg.model, dtype=dtype, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract, nnx.Param)
    params = restore_params(run_dir, abstract_params)
    m = cfg.model
    eval_step = make_eval_step(graphdef, corpus.token_bytes)
    held_out = val_batches(corpus.val_tokens, m.eval_batch_size, m.seq_len, m.eval_tokens, layout or cfg.data.layout)
    return evaluate_bpb(eval_step, params, held_out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m model.evaluate RUN_DIR")
    print(f"val_bpb: {evaluate_run(sys.argv[1]):.6f}")
