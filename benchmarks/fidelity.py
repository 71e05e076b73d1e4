"""What each departure from autoresearch costs or gains: val_bpb of model=tiny after a fixed number of steps
(`max_steps`, so the result does not depend on the machine's load), with one switch at autoresearch's value and at
the other, everything else at the defaults, over several seeds; the paired difference and its spread.

    python benchmarks/fidelity.py [--steps 300] [--seeds 3] [--switches optim.muon] [--eval-layout windows]
                                  [--untimed-steps 10]

Each run is scored on the held-out rows of its own data.layout, as autoresearch scores its packed rows;
`--eval-layout` adds a second row per switch with every trained model scored on one layout instead, which is
what compares the two values of data.layout on one yardstick.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from model.config import ModelConfig, TrainConfig
from model.data import LAYOUTS, DataConfig
from model.evaluate import evaluate_run
from model.train import train

CONFIGS = Path(__file__).resolve().parents[1] / "hydra_configs"
# switch -> (autoresearch's value, the other value)
SWITCHES = {
    "optim.muon": ("autoresearch", "optax"),
    "data.pretokenizer": ("gpt4", "bytelevel"),
    "data.layout": ("packed", "windows"),
    "optim.embedding_dtype": ("bfloat16", "float32"),
}


def val_bpb(overrides: dict, steps: int, seed: int, data_cache: str | None,
            eval_layout: str | None = None) -> tuple[float, float | None]:  # fmt: skip
    """val_bpb of model=tiny after `steps` optimizer steps with `overrides` (dotted keys of TrainConfig), and the
    same model's val_bpb on the held-out rows of `eval_layout` (None when not asked for)."""
    model = ModelConfig(**OmegaConf.to_container(OmegaConf.load(CONFIGS / "model" / "tiny.yaml")))
    data = DataConfig(**OmegaConf.to_container(OmegaConf.load(CONFIGS / "data" / "pystdlib.yaml")))  # the default's
    cfg = OmegaConf.structured(TrainConfig(model=model, data=data, max_steps=steps, seed=seed, save_checkpoint=bool(eval_layout),
                                           time_budget_s=1e9, log_every_s=1e9))  # fmt: skip
    if data_cache:
        cfg.data.cache_dir = data_cache
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    with tempfile.TemporaryDirectory() as out:
        result = train(OmegaConf.to_object(cfg), out)
        if result["status"] != "ok":
            raise RuntimeError(f"{overrides} seed {seed}: {result['status']}: {result.get('error')}")
        return result["val_bpb"], evaluate_run(out, eval_layout) if eval_layout else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--switches", nargs="+", default=list(SWITCHES), choices=list(SWITCHES))
    parser.add_argument("--data-cache", default=None, help="data.cache_dir (default: the user's cache)")
    parser.add_argument("--eval-layout", default=None, choices=LAYOUTS,
                        help="also score every trained model on the held-out rows of this data.layout")  # fmt: skip
    parser.add_argument("--untimed-steps", type=int, default=0,
                        help="also compare K extra steps (autoresearch leaves its first 10 off the clock) with none")
    args = parser.parse_args()
    print(f"model=tiny, {args.steps} steps, seeds 0-{args.seeds - 1}; val_bpb mean ± std over seeds\n")
    print("| switch | autoresearch's value | val_bpb | other value | val_bpb | paired difference (other - original) |")
    print("|---|---|---|---|---|---|")

    def fmt(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}" if len(xs) > 1 else f"{xs[0]:.4f}"

    comparisons = {key: ({key: SWITCHES[key][0]}, {key: SWITCHES[key][1]}) for key in args.switches}
    if args.untimed_steps:  # not a switch: the steps a time budget gets when its first ones are not timed
        comparisons["untimed first steps"] = ({"max_steps": args.steps + args.untimed_steps}, {})
    for key, (first, second) in comparisons.items():
        original, other = SWITCHES.get(key, (f"+{args.untimed_steps} steps", "+0"))
        a = [val_bpb(first, args.steps, s, args.data_cache, args.eval_layout) for s in range(args.seeds)]
        b = [val_bpb(second, args.steps, s, args.data_cache, args.eval_layout) for s in range(args.seeds)]
        rows = {f"`{key}`": 0} | ({f"`{key}`, scored on {args.eval_layout}": 1} if args.eval_layout else {})
        for label, score in rows.items():
            xs, ys = [r[score] for r in a], [r[score] for r in b]
            diff = [y - x for x, y in zip(xs, ys)]
            print(f"| {label} | {original} | {fmt(xs)} | {other} | {fmt(ys)} | {fmt(diff)} |", flush=True)


if __name__ == "__main__":
    main()
