"""What each departure from autoresearch costs or gains: val_bpb of model=tiny after a fixed number of steps
(`max_steps`, so the result does not depend on the machine's load), with one switch at autoresearch's value and at
the other, everything else at the defaults, over several seeds; the paired difference and its spread.

    python benchmarks/fidelity.py [--steps 300] [--seeds 3] [--switches optim.muon]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from model.config import ModelConfig, TrainConfig
from model.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "hydra_configs" / "model"
# switch -> (autoresearch's value, the other value)
SWITCHES = {"optim.muon": ("autoresearch", "optax"), "data.pretokenizer": ("gpt4", "bytelevel")}


def val_bpb(overrides: dict, steps: int, seed: int, data_cache: str | None) -> float:
    """val_bpb of model=tiny after `steps` optimizer steps with `overrides` (dotted keys of TrainConfig)."""
    model = ModelConfig(**OmegaConf.to_container(OmegaConf.load(CONFIGS / "tiny.yaml")))
    cfg = OmegaConf.structured(TrainConfig(model=model, max_steps=steps, seed=seed, save_checkpoint=False,
                                           time_budget_s=1e9, log_every_s=1e9))  # fmt: skip
    if data_cache:
        cfg.data.cache_dir = data_cache
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    with tempfile.TemporaryDirectory() as out:
        result = train(OmegaConf.to_object(cfg), out)
    if result["status"] != "ok":
        raise RuntimeError(f"{overrides} seed {seed}: {result['status']}: {result.get('error')}")
    return result["val_bpb"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--switches", nargs="+", default=list(SWITCHES), choices=list(SWITCHES))
    parser.add_argument("--data-cache", default=None, help="data.cache_dir (default: the user's cache)")
    args = parser.parse_args()
    print(f"model=tiny, {args.steps} steps, seeds 0-{args.seeds - 1}; val_bpb mean ± std over seeds\n")
    print("| switch | autoresearch's value | val_bpb | other value | val_bpb | paired difference (other - original) |")
    print("|---|---|---|---|---|---|")
    for key in args.switches:
        original, other = SWITCHES[key]
        a = [val_bpb({key: original}, args.steps, s, args.data_cache) for s in range(args.seeds)]
        b = [val_bpb({key: other}, args.steps, s, args.data_cache) for s in range(args.seeds)]
        diff = [y - x for x, y in zip(a, b)]

        def fmt(xs: list[float]) -> str:
            return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"

        print(f"| `{key}` | {original} | {fmt(a)} | {other} | {fmt(b)} | {fmt(diff)} |", flush=True)


if __name__ == "__main__":
    main()
