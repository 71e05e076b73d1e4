"""How long the embedded LLM server takes to read `method=llm` prompts of consecutive trials, with jaxhpo's table
of evaluations (its start moves ten trials at a time, so a server that keeps the previous prompt reads only the new
rows) and with a table that slides one row a turn (as the study's prompt does, and jaxhpo's did before).

    python benchmarks/prompt_cache.py [--trials 150] [--turns 5] [--threads 1]

The history is synthetic (random configurations of the autoresearch space, every 7th an OOM with a long message),
the server is `llm=local` (SmolLM2-135M) started once per table, and each request asks for one token, so the time is
the prompt's reading. The first prompt of each is read whole; the others show what the cache saves.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from pathlib import Path
from unittest import mock

import httpx
import numpy as np

from jaxhpo.journal import TrialRecord
from jaxhpo.llm import prompt
from jaxhpo.llm.server import LocalServer
from jaxhpo.space import Space

SPACE_FILE = Path(__file__).resolve().parents[1] / "hydra_configs/space/autoresearch.yaml"


def history(space: Space, n: int) -> list[TrialRecord]:
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        params = space.default() if i == 0 else space.sample(rng)
        failed = i % 7 == 6
        records.append(TrialRecord(
            number=i, params=params, space_id=space.space_id, method="llm", proposer="default" if i == 0 else "llm",
            status="oom" if failed else "ok", val_bpb=None if failed else float(1.6 + rng.random()),
            error="RESOURCE_EXHAUSTED: Out of memory allocating 8589934592 bytes " * 3 if failed else None,
            wall_seconds=10.0, training_seconds=8.0, peak_memory_mb=None, started_at=0.0, ended_at=1.0, seed=0,
            meta={}))  # fmt: skip
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=150, help="trials in the history at the first prompt")
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    space = Space.from_file(SPACE_FILE)
    records = history(space, args.trials + args.turns)
    sliding = mock.patch.object(prompt, "_window_start", lambda n_trials, n: max(0, n_trials - n))
    for name, patch in (("jaxhpo's table", contextlib.nullcontext()), ("sliding table", sliding)):
        with LocalServer(n_threads=args.threads) as server, patch:
            for n in range(args.trials, args.trials + args.turns):
                messages = prompt.llm_prompt(space, records[:n])
                t0 = time.perf_counter()
                reply = httpx.post(f"{server.base_url}/chat/completions", timeout=900,
                                   json={"messages": messages, "max_tokens": 1, "temperature": 0}).json()  # fmt: skip
                print(f"{name:<16} trial {n}: {reply['usage']['prompt_tokens']:>6} tokens read in "
                      f"{time.perf_counter() - t0:5.1f} s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
