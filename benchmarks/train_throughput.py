"""Trainer throughput on this machine: compile time, step time, tokens/s and achieved FLOP/s per model size,
beside the FLOP/s XLA reaches on a large float32 matrix product in the same process (the practical ceiling).

    python benchmarks/train_throughput.py [--models tiny small] [--seconds 30]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
from omegaconf import OmegaConf

from model.config import ModelConfig, TrainConfig
from model.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "hydra_configs" / "model"


def matmul_flops_per_second(n: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of an n×n float32 matrix product, compiled and warmed up."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, b).block_until_ready()
    t0 = time.perf_counter()
    for _ in range(repeats):
        matmul(a, b).block_until_ready()
    return 2 * n**3 * repeats / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "small"])
    parser.add_argument("--seconds", type=float, default=30.0, help="training time per model")
    args = parser.parse_args()

    peak = matmul_flops_per_second()
    print(f"backend: {jax.default_backend()}  devices: {jax.devices()}")
    print(f"float32 matmul 2048^3: {peak / 1e9:.1f} GFLOP/s\n")
    header = f"{'model':<8}{'params':>10}{'compile s':>11}{'step ms':>10}{'tokens/s':>11}{'GFLOP/s':>10}{'of matmul':>11}"
    print(header)
    for name in args.models:
        model = ModelConfig(**OmegaConf.to_container(OmegaConf.load(CONFIGS / f"{name}.yaml")))
        with tempfile.TemporaryDirectory() as out:
            r = train(TrainConfig(model=model, time_budget_s=args.seconds, save_checkpoint=False), out)
        if r["status"] != "ok":
            print(f"{name:<8} {r['status']}: {r.get('error')}")
            continue
        step_ms = 1000 * r["training_seconds"] / r["num_steps"]
        print(
            f"{name:<8}{r['num_params']:>10,}{r['compile_seconds']:>11.1f}{step_ms:>10.1f}"
            f"{r['tokens_per_second']:>11,}{r['flops_per_second'] / 1e9:>10.1f}{r['flops_per_second'] / peak:>10.0%}"
        )


if __name__ == "__main__":
    main()
