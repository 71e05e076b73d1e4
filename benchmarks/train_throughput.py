"""Trainer throughput: jaxhpo's compiled train step beside the same model and optimizer in PyTorch, eager and
torch.compile (benchmarks/torch_gpt.py), at the same shapes, threads and batch, in interleaved rounds.

For each model size it prints tokens/s per implementation (the median over rounds, and the spread), the achieved
FLOP/s (model.gpt.flops_per_token, the same count for all three) as a share of the machine's float32 matmul rate,
compile seconds, and the ratios jaxhpo / eager and jaxhpo / compiled. The process keeps freed host memory for
reuse as jaxhpo's trainer does on a CPU (model.device.keep_freed_host_memory), which speeds up all three. `--hlo` also counts the operations in
jaxhpo's optimized step (matrix products, copies, transposes, fusions): what a layout problem shows up as.

    pip install -e '.[bench]'     # torch, for the reference; without it only jaxhpo is measured
    python benchmarks/train_throughput.py [--models tiny small] [--seconds 60] [--rounds 5] [--hlo]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import time
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from omegaconf import OmegaConf

from model import device
from model.config import ModelConfig, grad_accum_steps
from model.gpt import GPT, flops_per_token, param_count
from model.optim import OptimConfig, build_optimizer
from model.train import make_train_step

CONFIGS = Path(__file__).resolve().parents[1] / "hydra_configs" / "model"
HLO_OPS = ("dot", "convolution", "copy", "transpose", "fusion", "scatter", "gather", "while")


def matmul_flops_per_second(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n×n float32 matrix product in XLA, compiled and warmed up: the practical ceiling."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeats):
        matmul(a, b).block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def load_model(name: str) -> ModelConfig:
    return ModelConfig(**OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml")))


def jax_step(m: ModelConfig, batch: np.ndarray):
    """jaxhpo's train step, as model.train builds it: (seconds to compile, run() -> loss, optimized HLO text)."""
    graphdef, params = nnx.split(GPT(m, rngs=nnx.Rngs(0)), nnx.Param)
    tx = build_optimizer(OptimConfig(), m.model_dim)
    opt_state = tx.init(params)
    t0 = time.perf_counter()
    compiled = jax.jit(make_train_step(graphdef, tx), donate_argnums=(0, 1)).lower(
        params, opt_state, batch, np.float32(0.0)
    ).compile()
    seconds = time.perf_counter() - t0
    state = [params, opt_state]

    def run() -> float:
        state[0], state[1], loss = compiled(state[0], state[1], batch, np.float32(0.5))
        return float(loss)

    return seconds, run, compiled.as_text()


def torch_step(m: ModelConfig, batch: np.ndarray, compiled: bool):
    """The PyTorch reference's step: (seconds of its first two steps, compilation included; run() -> loss)."""
    import torch

    from torch_gpt import make_step  # beside this script

    model, step = make_step(m, OptimConfig(), compiled)
    n = sum(p.numel() for p in model.parameters())
    if n != param_count(m):
        raise SystemExit(f"the PyTorch reference has {n:,} parameters where jaxhpo's model has {param_count(m):,}")
    tokens = torch.from_numpy(batch.astype(np.int64))
    t0 = time.perf_counter()
    step(tokens)
    step(tokens)  # torch.compile may compile again once the optimizer's state exists
    return time.perf_counter() - t0, lambda: step(tokens)


def hlo_counts(text: str) -> Counter:
    """How many of each HLO_OPS operation the optimized module holds (fused computations included)."""
    found = Counter(re.findall(r"=\s*\S+\s+(\w[\w-]*)\(", text))
    return Counter({op: found.get(op, 0) for op in HLO_OPS})


def measure(runs: dict, seconds: float, rounds: int) -> dict[str, list[float]]:
    """Steps per second of each implementation, in `rounds` interleaved rounds of seconds / rounds each."""
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            steps, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < seconds / rounds / len(runs) or steps < 2:
                run()
                steps += 1
            rates[name].append(steps / elapsed)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small"])
    parser.add_argument("--seconds", type=float, default=60.0, help="measuring time per model, all implementations")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hlo", action="store_true", help="count the operations of jaxhpo's optimized step")
    parser.add_argument("--no-torch", action="store_true", help="measure jaxhpo only")
    args = parser.parse_args()

    threads = os.cpu_count()
    device.keep_freed_host_memory()
    try:
        import torch

        torch.set_num_threads(threads)
        have_torch = not args.no_torch
    except ImportError:
        print("torch is not installed (pip install -e '.[bench]'): measuring jaxhpo only")
        have_torch = False

    peak = matmul_flops_per_second()
    print(f"backend: {jax.default_backend()}  jax {jax.__version__}  threads: {threads}"
          + (f"  torch {torch.__version__}" if have_torch else ""))  # fmt: skip
    print(f"float32 matmul 2048^3 (XLA): {peak / 1e9:.1f} GFLOP/s\n")
    for name in args.models:
        m = load_model(name)
        shape = (grad_accum_steps(m), m.device_batch_size, m.seq_len + 1)
        batch = np.random.default_rng(0).integers(0, m.vocab_size, shape, dtype=np.int32)
        compile_s, run, hlo = jax_step(m, batch)
        runs, compiles = {"jaxhpo": run}, {"jaxhpo": compile_s}
        if have_torch:
            for label, flag in (("torch eager", False), ("torch.compile", True)):
                compiles[label], runs[label] = torch_step(m, batch, flag)
        rates = measure(runs, args.seconds, args.rounds)

        tokens_per_step = shape[0] * shape[1] * m.seq_len
        print(f"model={name}: {param_count(m):,} parameters, {flops_per_token(m) / 1e6:.2f} MFLOP/token, "
              f"batch {shape[0]}×{shape[1]}×{m.seq_len}")  # fmt: skip
        print(f"  {'':<15}{'tokens/s':>10}{'spread':>9}{'GFLOP/s':>9}{'of matmul':>11}{'compile s':>11}")
        median = {}
        for label, r in rates.items():
            median[label] = statistics.median(r) * tokens_per_step
            spread = (max(r) - min(r)) / statistics.median(r)
            gflops = median[label] * flops_per_token(m) / 1e9
            print(f"  {label:<15}{median[label]:>10,.0f}{spread:>9.0%}{gflops:>9.1f}"
                  f"{gflops * 1e9 / peak:>11.0%}{compiles[label]:>11.1f}")  # fmt: skip
        for ref in ("torch eager", "torch.compile"):
            if ref in median:
                print(f"  jaxhpo / {ref}: {median['jaxhpo'] / median[ref]:.2f}")
        if args.hlo:
            print("  jaxhpo's optimized step: " + ", ".join(f"{op} {n}" for op, n in hlo_counts(hlo).items()))
        print()


if __name__ == "__main__":
    main()
