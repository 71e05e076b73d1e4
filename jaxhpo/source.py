"""The built-in trainer's source as an agent edits it (`method=agent_code`): one text holding the training constants
(the trial's hyperparameters, UPPER_CASE assignments, as autoresearch's train.py has them) and the model file
`model/gpt.py`; a trial folder's copy of the trainer with the edit in it; and the check an edit passes before its
trial runs.

A trial with an edit runs `trials/NNNN/src/model/` -- the installed `model` package copied, `gpt.py` replaced --
started with that folder first on its import path (`jaxhpo.trial.source_path`), never the installed package.
The check, `python -m jaxhpo.source TRIAL_DIR` in a subprocess with the same import path, imports the copy and
builds the model and its forward pass on abstract shapes (`nnx.eval_shape`, `jax.eval_shape`: no memory, no
compile) for the trial's config; a failure is one line, and the trial is `crashed` without running.
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from jaxhpo import lifeline
from jaxhpo.space import Space

MODEL_FILE = "model/gpt.py"  # the file an agent edits, relative to the source root
CONSTANTS = "# ---- training constants: this trial's hyperparameters (change the values) ----"
MODEL_MARK = f"# ---- {MODEL_FILE} ----"
SOURCE_DIR = "src"  # in a trial folder: the trainer's edited copy, run instead of the installed package
CHECK_TIMEOUT_S = 300


class SourceError(ValueError):
    """An edited source that cannot run; the message is one line."""


def package_dir() -> Path:
    """The installed `model` package (whose copy a trial edits)."""
    import model

    return Path(model.__file__).resolve().parent


def base_model_text() -> str:
    return (package_dir() / Path(MODEL_FILE).name).read_text()


def editable(space: Space, params: Mapping[str, Any], model_text: str) -> str:
    """The text an agent is shown and returns: the constants, then the model file."""
    constants = [f"{name} = {params[name]!r}" for name in space.names]
    return "\n".join([CONSTANTS, *constants, "", MODEL_MARK, model_text.rstrip("\n"), ""])


def split(text: str, space: Space) -> tuple[dict, str]:
    """(the constants it sets that the space has, the model file) from an edited text; SourceError (one line) when
    it has no model-file marker, or its constants or model file are not valid Python."""
    head, mark, model_text = text.partition(MODEL_MARK)
    if not mark:
        raise SourceError(f"the edited source lost its {MODEL_MARK!r} line, which starts the model file")
    try:
        tree = ast.parse(head)
    except SyntaxError as e:
        raise SourceError(f"training constants: {e.msg} (line {e.lineno})") from None
    given = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            name = node.targets[0].id
            if name in space.names:
                try:
                    given[name] = ast.literal_eval(node.value)
                except ValueError:
                    raise SourceError(f"training constant {name} is not a plain value") from None
    model_text = model_text.lstrip("\n")
    try:
        ast.parse(model_text)
    except SyntaxError as e:
        raise SourceError(f"{MODEL_FILE}: {e.msg} (line {e.lineno})") from None
    return given, model_text


def describe(model_text: str, base: str) -> dict:
    """What the journal keeps of an edit: the file, its sha256, and its unified diff against the installed one."""
    diff = "".join(difflib.unified_diff(base.splitlines(keepends=True), model_text.splitlines(keepends=True),
                                        f"a/{MODEL_FILE}", f"b/{MODEL_FILE}"))  # fmt: skip
    return {"path": MODEL_FILE, "sha256": hashlib.sha256(model_text.encode()).hexdigest(), "diff": diff}


def write_tree(trial_dir: Path, model_text: str) -> Path:
    """`trial_dir/src/model/`: the installed package's Python files with `gpt.py` replaced; returns `src`."""
    src = Path(trial_dir) / SOURCE_DIR
    target = src / "model"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for f in package_dir().glob("*.py"):
        shutil.copy2(f, target / f.name)
    (target / Path(MODEL_FILE).name).write_text(model_text)
    return src


def check(trial_dir: Path, config_yaml: str) -> str | None:
    """None if the copy in `trial_dir/src` imports and builds the model of `config_yaml` on abstract shapes, else
    the reason in one line."""
    trial_dir = Path(trial_dir)
    (trial_dir / "config.yaml").write_text(config_yaml)
    src = str((trial_dir / SOURCE_DIR).resolve())
    try:
        proc = subprocess.run(lifeline.command("jaxhpo.source", str(trial_dir), path=src), capture_output=True,
                              text=True, timeout=CHECK_TIMEOUT_S)  # fmt: skip
    except subprocess.TimeoutExpired:
        return f"the check did not finish in {CHECK_TIMEOUT_S} s"
    if proc.returncode == 0:
        return None
    lines = [line for line in (proc.stderr or proc.stdout).strip().splitlines() if line.strip()]
    return " ".join(lines[-1].split())[:300] if lines else f"the check exited with code {proc.returncode}"


def _check_main(trial_dir: str) -> None:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from model import gpt
    from model.config import load_config

    if Path(trial_dir, SOURCE_DIR).resolve() not in Path(gpt.__file__).resolve().parents:
        sys.exit(f"imported {gpt.__file__}, not the trial's copy")
    cfg = load_config(Path(trial_dir) / "config.yaml")
    model = nnx.eval_shape(lambda: gpt.GPT(cfg.model, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    tokens = jax.ShapeDtypeStruct((1, cfg.model.seq_len), jnp.int32)
    logits = jax.eval_shape(lambda s, x: nnx.merge(graphdef, s)(x), state, tokens)
    if logits.shape[:2] != (1, cfg.model.seq_len):
        sys.exit(f"the model returns logits of shape {logits.shape}, not (batch, {cfg.model.seq_len}, vocabulary)")


if __name__ == "__main__":
    try:
        _check_main(sys.argv[1])
    except Exception as e:  # whatever the edited code raises is the check's one-line answer
        sys.exit(f"{type(e).__name__}: {e}".splitlines()[0])
