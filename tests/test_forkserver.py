"""The fork server (jaxhpo.forkserver): a forked trial trains exactly as a new interpreter does, shows as a trial,
dies with the server, and a trial whose server is gone starts a new interpreter instead."""

import os
import signal
import time

from omegaconf import OmegaConf

from jaxhpo.forkserver import ForkServer
from jaxhpo.trial import run_trial
from tests.test_train import tiny_config


def test_a_forked_trial_trains_as_a_new_interpreter_does(tmp_path, data_cache):
    cfg = tiny_config(data_cache, max_steps=3, time_budget_s=600.0, save_checkpoint=False)
    fresh = run_trial(cfg, tmp_path / "fresh")
    forks = ForkServer()
    try:
        forked = run_trial(cfg, tmp_path / "forked", forks=forks)
        assert forks.alive
    finally:
        forks.close()
    assert fresh.status == forked.status == "ok", (fresh.error, forked.error)
    assert forked.val_bpb == fresh.val_bpb  # same program, same machine: the same bits
    assert forked.result["num_steps"] == 3 and "val_bpb" in (tmp_path / "forked/train.log").read_text()
    assert not forks.alive


def alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended)."""
    try:
        return "\nState:\tZ" not in open(f"/proc/{pid}/status").read()
    except OSError:
        return False


def test_a_forked_trial_shows_as_a_trial_and_dies_with_its_server(tmp_path, data_cache):
    cfg = tiny_config(data_cache, max_steps=10_000, time_budget_s=600.0)
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    forks = ForkServer()
    child = forks.spawn(str(tmp_path), str(tmp_path / "train.log"), dict(os.environ))
    title = b""
    for _ in range(100):  # the child sets its title first thing
        title = open(f"/proc/{child.pid}/cmdline", "rb").read()
        if b"jaxhpo.trial" in title:
            break
        time.sleep(0.05)
    assert title.startswith(f"{os.sys.executable} -m jaxhpo.trial {tmp_path}".encode()), title
    assert os.getpgid(child.pid) == child.pid  # a session of its own: a timeout kills it and its children
    os.kill(forks._proc.pid, signal.SIGKILL)  # the server dies as it would with a study killed by kill -9
    assert child.wait(timeout=30) == -signal.SIGKILL
    deadline = time.time() + 15
    while alive(child.pid) and time.time() < deadline:  # the parent-death signal, then re-parented and reaped
        time.sleep(0.1)
    assert not alive(child.pid)
    assert not forks.alive
    # A trial after that starts a new interpreter instead, and trains.
    outcome = run_trial(tiny_config(data_cache, max_steps=2, time_budget_s=600.0, save_checkpoint=False),
                        tmp_path / "after", forks=forks)  # fmt: skip
    assert outcome.status == "ok", outcome.error
    forks.close()
