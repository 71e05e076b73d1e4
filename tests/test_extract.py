"""Drafting a search space from a training script: what is found, what is skipped, and the YAML it writes."""

import math

import pytest
import yaml
from omegaconf import OmegaConf

from jaxhpo.extract import KNOWN, draft_space, extract_params, main, scan, to_yaml
from jaxhpo.space import Space, SpaceConfig
from tests.conftest import REPO, run_cli

# The header of autoresearch's train.py, with the fixed names it imports or sets, and some distractors.
TRAIN_PY = '''\
"""A training script shaped like autoresearch's train.py."""
import time

MAX_SEQ_LEN = 2048
TIME_BUDGET = 300
H100_BF16_PEAK_FLOPS = 989.5e12

# Model architecture
ASPECT_RATIO = 64
HEAD_DIM = 128
WINDOW_PATTERN = "SSSL"

# Optimization
TOTAL_BATCH_SIZE = 2**19
EMBEDDING_LR = 0.6
UNEMBEDDING_LR = 0.004
MATRIX_LR = 0.04
SCALAR_LR = 0.5
WEIGHT_DECAY = 0.2
ADAM_BETAS = (0.8, 0.95)
WARMUP_RATIO = 0.0
WARMDOWN_RATIO = 0.5
FINAL_LR_FRAC = 0.0

# Model size
DEPTH = 8
DEVICE_BATCH_SIZE = 128
DROPOUT = 0.1

learning_rate_scale = 1.0
T_START = time.time()


def train():
    INNER_LR = 0.1
    return INNER_LR
'''

FOURTEEN = list(KNOWN)


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "train.py"
    path.write_text(TRAIN_PY)
    return path


def autoresearch_space() -> Space:
    cfg = yaml.safe_load((REPO / "hydra_configs/space/autoresearch.yaml").read_text())
    return Space.from_config(cfg)


def load_draft(text: str) -> Space:
    cfg = yaml.safe_load(text)
    assert cfg.pop("defaults") == ["space_schema", "_self_"]
    return Space.from_config(cfg)


def test_finds_the_fourteen_and_the_unknown_with_their_values(script):
    found = {f.name: f for f in extract_params(script.read_text())}
    assert sorted(found) == sorted(FOURTEEN + ["DROPOUT"])
    assert found["TOTAL_BATCH_SIZE"].value == 524288 and found["TOTAL_BATCH_SIZE"].kind == "int"
    assert found["DEPTH"].value == 8 and found["DEPTH"].kind == "int"
    assert found["MATRIX_LR"].value == 0.04 and found["MATRIX_LR"].kind == "float"
    assert found["WARMUP_RATIO"].value == 0.0 and found["WARMUP_RATIO"].kind == "float"
    assert found["WINDOW_PATTERN"].value == "SSSL" and found["WINDOW_PATTERN"].kind == "str"
    assert [f.name for f in extract_params(script.read_text())][:3] == ["ASPECT_RATIO", "HEAD_DIM", "WINDOW_PATTERN"]


def test_skips_fixed_non_literal_lowercase_and_nested_names(script):
    _, skipped = scan(script.read_text())
    reasons = {s.name: s.reason for s in skipped}
    for name in ("MAX_SEQ_LEN", "TIME_BUDGET", "H100_BF16_PEAK_FLOPS"):
        assert reasons[name] == "fixed"
    assert "tuple" in reasons["ADAM_BETAS"]
    assert "call" in reasons["T_START"]
    assert reasons["learning_rate_scale"] == "not UPPER_CASE"
    assert "INNER_LR" not in reasons  # inside a function: not a module-level name at all
    assert "INNER_LR" not in {f.name for f in extract_params(script.read_text())}
    # the user's own fixed names
    assert "DROPOUT" not in {f.name for f in extract_params(script.read_text(), skip=["DROPOUT"])}


def test_the_draft_of_the_fourteen_is_the_studys_table_1(script):
    found = [f for f in extract_params(script.read_text()) if f.name in KNOWN]
    draft = draft_space(found, "autoresearch")
    space = load_draft(to_yaml(draft))
    reference = autoresearch_space()
    assert space.definition() == reference.definition()
    assert space.space_id == reference.space_id
    assert space.default() == reference.default()
    assert all(not p.key.startswith("TODO") for p in space.params)


def test_an_unknown_name_gets_a_placeholder_key_and_a_todo_comment(script):
    draft = draft_space(extract_params(script.read_text()), "train")
    spec = draft["params"]["DROPOUT"]
    assert spec["key"] == "TODO.dropout"
    assert spec["type"] == "float" and spec["low"] <= 0.1 <= spec["high"] and spec["default"] == 0.1
    text = to_yaml(draft)
    (line,) = [ln for ln in text.splitlines() if ln.strip().startswith("DROPOUT:")]
    assert "# TODO: check range" in line
    assert sum("TODO: check range" in ln for ln in text.splitlines()) == 1  # only the unknown one
    assert load_draft(text).default()["DROPOUT"] == 0.1


def test_the_file_loads_through_the_hydra_schema_too():
    source = 'USE_FLASH = True\nDTYPE = "bfloat16"\nEPS = 1e-8\nNUM_STEPS: int = 5000\nOFFSET = -3\nLABEL = "a: b"\n'
    text = to_yaml(draft_space(extract_params(source), "misc"))
    cfg = yaml.safe_load(text)
    cfg.pop("defaults")
    merged = OmegaConf.merge(OmegaConf.structured(SpaceConfig), OmegaConf.create(cfg))
    space = Space.from_config(merged)
    assert space.default() == {"USE_FLASH": "true", "DTYPE": "bfloat16", "EPS": 1e-8, "NUM_STEPS": 5000,
                               "OFFSET": -3, "LABEL": "a: b"}
    assert Space.from_config(cfg).definition() == space.definition()


def test_guessed_ranges():
    source = ("BASE_LR = 3e-4\nBATCH_SIZE = 64\nNUM_LAYERS = 6\nLABEL_SMOOTHING = 0.0\nMIX_RATIO = 0.75\n"
              "CLIP = 1.5\nUSE_BIAS = False\nMODE = 'fast'\nACTIVATION = 'gelu'\n")
    p = draft_space(extract_params(source), "x")["params"]
    assert p["BASE_LR"] == {"type": "float", "key": "TODO.base_lr", "low": pytest.approx(3e-5),
                            "high": pytest.approx(3e-3), "log": True, "default": 3e-4}
    assert (p["BATCH_SIZE"]["low"], p["BATCH_SIZE"]["high"], p["BATCH_SIZE"].get("pow2")) == (16, 256, True)
    assert (p["NUM_LAYERS"]["low"], p["NUM_LAYERS"]["high"], p["NUM_LAYERS"].get("pow2")) == (1, 24, None)
    assert (p["LABEL_SMOOTHING"]["low"], p["LABEL_SMOOTHING"]["high"]) == (0.0, 1.0)
    assert (p["MIX_RATIO"]["low"], p["MIX_RATIO"]["high"]) == (0.0, 1.0)  # a ratio stays within [0, 1]
    assert (p["CLIP"]["low"], p["CLIP"]["high"]) == (0.0, 3.0)
    assert p["USE_BIAS"]["choices"] == ["true", "false"] and p["USE_BIAS"]["default"] == "false"
    assert p["MODE"]["choices"] == ["fast"]
    assert p["ACTIVATION"]["choices"] == ["gelu", "relu", "silu"]
    assert all(s["key"].startswith("TODO.") for s in p.values())


def test_literal_forms_and_arithmetic():
    source = ("A = -1\nB: float = 2 ** -3\nC = 4 * 1024 * 1024\nD = -(1e-3) + 0.5\nE = 10 // 3\n"
              "F, G = 1, 'x'\nH = I = 7\nJ = 1 / 0\nK = 10 ** 10 ** 10\nL = SOME_NAME\nM = f'{A}'\nN = None\n"
              "O = 1\nO = 2\nif True:\n    P = 3\n")
    found, skipped = scan(source)
    assert {f.name: f.value for f in found} == {"A": -1, "B": 0.125, "C": 4194304, "D": 0.499, "E": 3, "F": 1,
                                                "G": "x", "H": 7, "I": 7, "O": 2}
    assert {s.name for s in skipped} == {"J", "K", "L", "M", "N"}


def test_a_value_outside_table_1_is_clamped_with_a_comment():
    draft = draft_space(extract_params("DEVICE_BATCH_SIZE = 16\nHEAD_DIM = 96\nWINDOW_PATTERN = 'SL'\n"), "x")
    p = draft["params"]
    assert p["DEVICE_BATCH_SIZE"]["default"] == 32 and "clamped" in draft["notes"]["DEVICE_BATCH_SIZE"]
    assert p["HEAD_DIM"]["default"] == 128 and "snapped" in draft["notes"]["HEAD_DIM"]
    assert p["WINDOW_PATTERN"]["choices"][-1] == "SL" and p["WINDOW_PATTERN"]["default"] == "SL"
    text = to_yaml(draft)
    assert "# default clamped from the script's 16" in text
    load_draft(text)


@pytest.mark.parametrize("x", [1e-5, 3e-4, 989.5e12, 1e16, 0.1, 2.0, 1e-10, 123456789.0])
def test_floats_read_back_as_the_same_float(x):
    text = to_yaml({"defaults": [], "name": "x", "params": {
        "X": {"type": "float", "key": "k", "low": x / 10, "high": x * 10, "log": True, "default": x}}})
    spec = yaml.safe_load(text)["params"]["X"]
    assert spec["default"] == x and isinstance(spec["low"], float) and math.isclose(spec["high"], x * 10)
    assert OmegaConf.create(text).params.X.default == x


def test_cli_writes_the_draft_and_a_summary(script, tmp_path):
    out = tmp_path / "drafts" / "train.yaml"
    proc = run_cli("jaxhpo.extract", str(script), "-o", str(out), "--name", "mine", "--skip", "WEIGHT_DECAY")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    space = load_draft(out.read_text())
    assert space.name == "mine"
    assert set(space.names) == set(FOURTEEN + ["DROPOUT"]) - {"WEIGHT_DECAY"}
    assert "14 hyperparameters: 13 from Table 1, 1 placeholder (DROPOUT)" in proc.stderr
    assert "skipped (fixed): MAX_SEQ_LEN, TIME_BUDGET, H100_BF16_PEAK_FLOPS, WEIGHT_DECAY" in proc.stderr
    assert "ADAM_BETAS" in proc.stderr and "T_START" in proc.stderr


def test_cli_prints_to_stdout_without_o(script, capsys):
    assert main([str(script)]) == 0
    out = capsys.readouterr()
    assert load_draft(out.out).name == "train"
    assert "1 placeholder (DROPOUT)" in out.err


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("DEPTH = (\n", "syntax error"),
    ("depth = 8\nMAX_SEQ_LEN = 2048\nX = foo()\n", "no UPPER_CASE"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    path = tmp_path / "bad.py"
    if content is not None:
        path.write_text(content)
    assert main([str(path)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in out.err
