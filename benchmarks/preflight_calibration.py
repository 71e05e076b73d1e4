"""How often the memory pre-flight is right: real runs on a grid of model and batch shapes under an address-space
limit, each with the pre-flight's prediction recorded but not enforced, against how the run really ended.

    python benchmarks/preflight_calibration.py [--limit-gb 3] [--workers 2]

Every configuration runs as a study trial does (`jaxhpo.trial.run_trial`: a subprocess under RLIMIT_AS, the
tiny model's sequence length and vocabulary, 1 s of training, a shared compilation cache) with
`preflight=false`, so it really trains or really runs out of memory; its result.json carries the prediction.
The table then counts, for several values of the host reserve (`model.preflight.HOST_RESERVE_BYTES`), how
often the prediction agreed with the run: refused-and-OOMed, passed-and-fitted, and the two ways to be wrong
(refusing a run that fits wastes a good configuration; passing one that OOMs wastes its compile and start-up).
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
from pathlib import Path

from omegaconf import OmegaConf

from jaxhpo.trial import TrialConfig
from jaxhpo.workers import WorkerPool
from model import preflight
from model.config import ModelConfig, TrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "hydra_configs" / "model"
GIB = 2**30


def grid() -> list[dict]:
    """Shapes from well inside to well past a few GB: depth, width (aspect ratio) and device batch."""
    return [
        {"depth": d, "aspect_ratio": a, "device_batch_size": b}
        for d, a, b in itertools.product((2, 4, 6, 8), (64, 128, 192), (16, 64))
    ]


def run_grid(limit_gb: float, workers: int, out: Path) -> list[dict]:
    base = ModelConfig(**OmegaConf.to_container(OmegaConf.load(CONFIGS / "tiny.yaml")))
    trial = TrialConfig(time_budget_s=1.0, memory_limit_gb=limit_gb, preflight=False, timeout_s=600)
    rows, pending = [], list(enumerate(grid()))
    with WorkerPool(workers, trial, out) as pool:
        while pending or pool.running:
            while pending and pool.free:
                i, shape = pending.pop(0)
                model = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(base), shape))
                model.total_batch_size = model.device_batch_size * model.seq_len
                cfg = TrainConfig(model=model, time_budget_s=1.0, memory_limit_gb=limit_gb, preflight=False,
                                  save_checkpoint=False, compile_cache_dir=str(out / "xla_cache"))  # fmt: skip
                pool.start(i, cfg, out / f"{i:03d}", trial.timeout_s)
                rows.append({"shape": shape})
            for i, outcome in pool.wait():
                pf = outcome.result.get("preflight")
                rows[i].update(status=outcome.status, preflight=pf, rss=outcome.result.get("peak_memory_mb"))
                print(f"{i:>3} {rows[i]['shape']} {outcome.status:<8} "
                      + (f"predicted {pf['predicted']:.2f} GiB" if pf else f"no prediction ({outcome.error})"),
                      flush=True)  # fmt: skip
    return rows


def confusion(rows: list[dict], limit_gb: float, reserve: int) -> dict[str, int]:
    """Counts of (predicted oom?, really oom?) with the host reserve set to `reserve` bytes."""
    counts = {"refused, OOMed": 0, "passed, fitted": 0, "refused, would fit": 0, "passed, OOMed": 0}
    for r in rows:
        pf = r["preflight"]
        if pf is None or r["status"] not in ("ok", "oom"):
            continue
        vm = pf["host"] * GIB - preflight.HOST_RESERVE_BYTES  # the address space measured at the check
        predicted = vm + reserve + max(pf["train_peak"], pf["eval_peak"]) * GIB
        refuse, oom = predicted > limit_gb * GIB, r["status"] == "oom"
        key = {(True, True): "refused, OOMed", (False, False): "passed, fitted", (True, False): "refused, would fit",
               (False, True): "passed, OOMed"}[(refuse, oom)]  # fmt: skip
        counts[key] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-gb", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = run_grid(args.limit_gb, args.workers, Path(tmp))
    missing = [r for r in rows if r["preflight"] is None]
    print(f"\n{len(rows)} configurations under a {args.limit_gb:g} GB address-space limit; "
          f"{sum(r['status'] == 'oom' for r in rows)} really OOMed, {len(missing)} ended before the check\n")  # fmt: skip
    print(f"{'host reserve':>12} | {'refused, OOMed':>14} | {'passed, fitted':>14} | {'refused, would fit':>18} | "
          f"{'passed, OOMed':>13}")  # fmt: skip
    for reserve_mb in (-512, -256, -128, 0, 128, 256, 512):
        c = confusion(rows, args.limit_gb, reserve_mb * 2**20)
        mark = "  <- current" if reserve_mb * 2**20 == preflight.HOST_RESERVE_BYTES else ""
        print(f"{reserve_mb:>9} MB | {c['refused, OOMed']:>14} | {c['passed, fitted']:>14} | "
              f"{c['refused, would fit']:>18} | {c['passed, OOMed']:>13}{mark}")  # fmt: skip


if __name__ == "__main__":
    main()
