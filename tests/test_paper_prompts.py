"""`protocol=paper`: the study's prompts, reply reading and value handling, against texts written out by hand from
the study's code (autoresearch-automl's centaur_backend.py, karpathy_agent_hps_backend.py and
core/search_space.py), so that any drift from the paper's exact characters shows."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from jaxhpo.llm.paper import (
    PaperRow,
    agent_prompt,
    centaur_prompt,
    clamp,
    cma_analysis,
    history,
    incumbent,
    parse_reply,
    snap_pow2,
    space_description,
)
from jaxhpo.space import Space
from tests.conftest import REPO

SPACE = Space.from_config(yaml.safe_load((REPO / "hydra_configs/space/autoresearch.yaml").read_text()))
# Given out of alphabetical order, to show that the study's ConfigurationSpace sorts the names.
TINY = Space("tiny", {
    "WINDOW_PATTERN": {"type": "categorical", "key": "model.window_pattern", "choices": ["SSSL", "LLLL"],
                       "default": "SSSL"},
    "DEPTH": {"type": "int", "key": "model.depth", "low": 4, "high": 24, "default": 8},
    "MATRIX_LR": {"type": "float", "key": "optim.matrix_lr", "low": 0.005, "high": 0.2, "log": True, "default": 0.04},
})  # fmt: skip
A = {"DEPTH": 8, "MATRIX_LR": 0.04, "WINDOW_PATTERN": "SSSL"}
B = {"DEPTH": 24, "MATRIX_LR": 0.2, "WINDOW_PATTERN": "LLLL"}
A_JSON = '{"DEPTH": 8, "MATRIX_LR": 0.04, "WINDOW_PATTERN": "SSSL"}'
B_JSON = '{"DEPTH": 24, "MATRIX_LR": 0.2, "WINDOW_PATTERN": "LLLL"}'
A_INDENTED = ["{", '  "DEPTH": 8,', '  "MATRIX_LR": 0.04,', '  "WINDOW_PATTERN": "SSSL"', "}"]
CONTINUOUS = ["ASPECT_RATIO", "DEPTH", "DEVICE_BATCH_SIZE", "EMBEDDING_LR", "FINAL_LR_FRAC", "HEAD_DIM", "MATRIX_LR",
              "SCALAR_LR", "TOTAL_BATCH_SIZE", "UNEMBEDDING_LR", "WARMDOWN_RATIO", "WARMUP_RATIO", "WEIGHT_DECAY"]


# -- the space -----------------------------------------------------------------------------------------------------


def test_space_description_is_configspace_text_in_alphabetical_order():
    assert space_description(SPACE).split("\n") == [
        "  ASPECT_RATIO: ASPECT_RATIO, Type: UniformInteger, Range: [32, 128], Default: 64",
        "  DEPTH: DEPTH, Type: UniformInteger, Range: [4, 24], Default: 8",
        "  DEVICE_BATCH_SIZE: DEVICE_BATCH_SIZE, Type: UniformInteger, Range: [32, 256], Default: 128, on log-scale",
        "  EMBEDDING_LR: EMBEDDING_LR, Type: UniformFloat, Range: [0.01, 2.0], Default: 0.6, on log-scale",
        "  FINAL_LR_FRAC: FINAL_LR_FRAC, Type: UniformFloat, Range: [0.0, 0.2], Default: 0.0",
        "  HEAD_DIM: HEAD_DIM, Type: UniformInteger, Range: [64, 256], Default: 128, on log-scale",
        "  MATRIX_LR: MATRIX_LR, Type: UniformFloat, Range: [0.005, 0.2], Default: 0.04, on log-scale",
        "  SCALAR_LR: SCALAR_LR, Type: UniformFloat, Range: [0.05, 2.0], Default: 0.5, on log-scale",
        "  TOTAL_BATCH_SIZE: TOTAL_BATCH_SIZE, Type: UniformInteger, Range: [65536, 2097152], Default: 524288, "
        "on log-scale",
        "  UNEMBEDDING_LR: UNEMBEDDING_LR, Type: UniformFloat, Range: [0.0005, 0.05], Default: 0.004, on log-scale",
        "  WARMDOWN_RATIO: WARMDOWN_RATIO, Type: UniformFloat, Range: [0.1, 0.8], Default: 0.5",
        "  WARMUP_RATIO: WARMUP_RATIO, Type: UniformFloat, Range: [0.0, 0.3], Default: 0.0",
        "  WEIGHT_DECAY: WEIGHT_DECAY, Type: UniformFloat, Range: [0.0, 0.5], Default: 0.2",
        "  WINDOW_PATTERN: WINDOW_PATTERN, Type: Categorical, Choices: {SSSL, SSLL, SLSL, LLLL, SSSS, LSSL}, "
        "Default: SSSL",
    ]


def test_space_description_prints_float_defaults_as_floats():
    space = Space("s", {"WD": {"type": "float", "key": "optim.wd", "low": 0, "high": 1, "default": 0}})
    assert space_description(space) == "  WD: WD, Type: UniformFloat, Range: [0.0, 1.0], Default: 0.0"


# -- history and incumbent -----------------------------------------------------------------------------------------


def test_history_lines_for_ok_crashed_and_failed_rows():
    rows = [PaperRow(A, 1.25), PaperRow(B, None, "OOM: CUDA out of memory"), PaperRow(B), PaperRow(B, None, ""),
            PaperRow(A, 0.5, "ignored: a value wins")]
    assert history(rows).split("\n") == [
        f"  {A_JSON} → val_bpb=1.25",
        f"  {B_JSON} → CRASHED (OOM: CUDA out of memory)",
        f"  {B_JSON} → FAILED",
        f"  {B_JSON} → FAILED",
        f"  {A_JSON} → val_bpb=0.5",
    ]
    assert history([]) == ""


def test_history_keeps_key_order_converts_numpy_and_shows_the_last_20():
    assert history([PaperRow({"Z": np.int64(3), "A": np.float64(0.5), "M": np.str_("x")}, 1.0)]) == (
        '  {"Z": 3, "A": 0.5, "M": "x"} → val_bpb=1.0')
    rows = [PaperRow({"i": i}, float(i)) for i in range(25)]
    lines = history(rows).split("\n")
    assert len(lines) == 20
    assert lines[0] == '  {"i": 5} → val_bpb=5.0' and lines[-1] == '  {"i": 24} → val_bpb=24.0'


def test_incumbent_is_the_lowest_val_bpb_and_failures_count_as_infinite():
    rows = [PaperRow(B, None, "OOM"), PaperRow(B, 1.5), PaperRow(A, 1.25), PaperRow(B, 1.25)]
    assert incumbent(rows) == "\n".join(["Current best config (val_bpb=1.25):"] + A_INDENTED)
    assert incumbent([]) == ""


def test_incumbent_with_no_value_shows_the_first_row_and_a_question_mark():
    rows = [PaperRow(A, None, "OOM"), PaperRow(B)]
    assert incumbent(rows) == "\n".join(["Current best config (val_bpb=?):"] + A_INDENTED)


# -- CMA-ES's analysis ---------------------------------------------------------------------------------------------


def test_cma_analysis_while_initializing():
    assert cma_analysis(None, A).split("\n") == [
        "## CMA-ES Advisor",
        "CMA-ES is still initializing (not enough trials for covariance estimation).",
        "",
        "CMA-ES's next suggestion: {",
    ] + A_INDENTED[1:]


def test_cma_analysis_with_state_top_trials_and_a_small_covariance():
    state = {"n_trials": 12, "sigma": 0.31234, "top": [(A, 1.23461), (B, 1.5)],
             "cov": [[0.5, -1e-9], [-1e-9, 0.125]], "cov_names": ["DEPTH", "MATRIX_LR"]}
    assert cma_analysis(state, A).split("\n") == [
        "## CMA-ES Advisor Analysis",
        "CMA-ES has run 12 trials (sigma=0.3123, smaller=more focused).",
        "",
        "CMA-ES's next suggestion: {",
    ] + A_INDENTED[1:] + [
        "",
        "Top 5 configs found by CMA-ES:",
        f"  1. val_bpb=1.2346: {A_JSON}",
        f"  2. val_bpb=1.5000: {B_JSON}",
        "",
        "CMA-ES covariance matrix (2x2). This matrix describes how the hyperparameters co-vary in the learned search "
        "distribution. Positive off-diagonal entries mean those HPs tend to increase together in good regions; "
        "negative entries mean they trade off. Row/column order: 0=DEPTH, 1=MATRIX_LR.",
        "[[ 0.5   -0.   ]",  # suppress_small: no 1e-09 in scientific notation
        " [-0.     0.125]]",
    ]


def test_cma_analysis_shows_the_13x13_covariance_of_the_continuous_parameters():
    C = np.random.default_rng(0).normal(size=(13, 13))
    C = C @ C.T
    state = {"n_trials": 40, "sigma": 0.5, "top": [], "cov": C.tolist(), "cov_names": CONTINUOUS}
    text = cma_analysis(state, SPACE.default())
    assert "Top 5 configs" not in text  # no completed trials: no list at all
    header = next(line for line in text.split("\n") if line.startswith("CMA-ES covariance matrix"))
    assert header.startswith("CMA-ES covariance matrix (13x13). This matrix describes how the hyperparameters")
    assert header.endswith(
        "Row/column order: 0=ASPECT_RATIO, 1=DEPTH, 2=DEVICE_BATCH_SIZE, 3=EMBEDDING_LR, 4=FINAL_LR_FRAC, "
        "5=HEAD_DIM, 6=MATRIX_LR, 7=SCALAR_LR, 8=TOTAL_BATCH_SIZE, 9=UNEMBEDDING_LR, 10=WARMDOWN_RATIO, "
        "11=WARMUP_RATIO, 12=WEIGHT_DECAY.")
    assert text.endswith(header + "\n" + np.array2string(C, precision=4, suppress_small=True))
    assert text.count("\n[[") == 1  # one matrix; 13 columns wrap each row onto two lines at numpy's 75 characters


def test_cma_analysis_drops_a_covariance_whose_names_do_not_fit():
    state = {"n_trials": 3, "sigma": 1.0, "top": [], "cov": np.eye(3).tolist(), "cov_names": ["DEPTH", "MATRIX_LR"]}
    assert "covariance" not in cma_analysis(state, A)
    assert "covariance" not in cma_analysis(state | {"cov": None}, A)


# -- the prompts ---------------------------------------------------------------------------------------------------

TINY_SPACE_LINES = [
    "  DEPTH: DEPTH, Type: UniformInteger, Range: [4, 24], Default: 8",
    "  MATRIX_LR: MATRIX_LR, Type: UniformFloat, Range: [0.005, 0.2], Default: 0.04, on log-scale",
    "  WINDOW_PATTERN: WINDOW_PATTERN, Type: Categorical, Choices: {SSSL, LLLL}, Default: SSSL",
]
CENTAUR_HEAD = [
    "You are optimizing hyperparameters for a GPT-2 scale transformer trained on climbmix-400b-shuffle.",
    "Goal: minimize val_bpb. GPU: H200 with ~100GB available.",
    "",
    "Search space:",
]
CENTAUR_TAIL = [
    "",
    "Use CMA-ES's analysis as guidance:",
    "- If CMA-ES is converging (low sigma), exploit near its mean",
    "- If sigma is large, CMA-ES is still exploring — help by using your transformer knowledge",
    "- You can diverge from CMA-ES if you see patterns it might miss (e.g., OOM-prone regions, known good ratios)",
    "",
    "Respond ONLY with a valid JSON object mapping HP names to values.",
]
AGENT_HEAD = [
    "You are optimizing hyperparameters for a GPT-2 scale transformer trained on climbmix-400b-shuffle.",
    "The goal is to minimize val_bpb (validation bits-per-byte).",
    "Training runs on a single H200 GPU (141GB VRAM, ~100GB available after vLLM) — configs with very high DEPTH, "
    "large HEAD_DIM,",
    "or large DEVICE_BATCH_SIZE may cause OOM (out of memory) crashes.",
    "",
    "Current search space with bounds:",
]
AGENT_TAIL = [
    "",
    "Suggest the next configuration to try. Learn from both successful runs AND failures (OOM crashes",
    "mean the model was too large for the GPU). Respond with a JSON object mapping HP names to values.",
    "Only include HPs from the search space. Be creative but principled — consider what you know",
    "about transformer training dynamics.",
    "",
    "Respond ONLY with a valid JSON object, no explanation.",
]


def test_centaur_prompt_in_full():
    rows = [PaperRow(A, 1.25), PaperRow(B, None, "OOM")]
    assert centaur_prompt(TINY, None, B, rows, "~100GB").split("\n") == CENTAUR_HEAD + TINY_SPACE_LINES + [
        "",
        "## CMA-ES Advisor",
        "CMA-ES is still initializing (not enough trials for covariance estimation).",
        "",
        "CMA-ES's next suggestion: {",
        '  "DEPTH": 24,',
        '  "MATRIX_LR": 0.2,',
        '  "WINDOW_PATTERN": "LLLL"',
        "}",
        "",
        "Previous evaluations (last 20):",
        f"  {A_JSON} → val_bpb=1.25",
        f"  {B_JSON} → CRASHED (OOM)",
        "",
        "Current best config (val_bpb=1.25):",
    ] + A_INDENTED + CENTAUR_TAIL


def test_centaur_prompt_without_evaluations_and_on_the_full_space():
    state = {"n_trials": 30, "sigma": 0.25, "top": [(SPACE.default(), 1.0)], "cov": np.eye(13).tolist(),
             "cov_names": CONTINUOUS}
    text = centaur_prompt(SPACE, state, SPACE.default(), [], "~100GB")
    lines = text.split("\n")
    assert lines[:4] == CENTAUR_HEAD and lines[-len(CENTAUR_TAIL):] == CENTAUR_TAIL
    sections = [space_description(SPACE), cma_analysis(state, SPACE.default()),
                "Previous evaluations (last 20):\n(no evaluations yet)\n\n\n\nUse CMA-ES's analysis"]
    at = [text.index(s) for s in sections]
    assert at == sorted(at)


def test_agent_prompt_in_full():
    rows = [PaperRow(B, None, "OOM"), PaperRow(A, 1.25)]
    assert agent_prompt(TINY, rows, "~100GB").split("\n") == AGENT_HEAD + TINY_SPACE_LINES + [
        "",
        "Previous evaluations (config → result):",
        f"  {B_JSON} → CRASHED (OOM)",
        f"  {A_JSON} → val_bpb=1.25",
        "",
        "Current best config (val_bpb=1.25):",
    ] + A_INDENTED + AGENT_TAIL


def test_agent_prompt_without_evaluations_and_its_incumbent_like_centaurs():
    empty = "\n".join(AGENT_HEAD + TINY_SPACE_LINES + ["", "Previous evaluations (config → result):",
                                                       "(no evaluations yet)", "", ""] + AGENT_TAIL)
    assert agent_prompt(TINY, [], "~100GB") == empty
    rows = [PaperRow(A, None, "OOM"), PaperRow(B)]  # nothing finished: the first row and "?", as Centaur's
    assert incumbent(rows) in agent_prompt(TINY, rows)
    assert "~120GB available after vLLM" in agent_prompt(TINY, rows)  # the study's AVAILABLE_VRAM default


def test_agent_incumbent_does_not_convert_numpy_values_as_the_study_does_not():
    rows = [PaperRow({"DEPTH": np.int64(8)}, 1.0)]
    assert '"DEPTH": 8' in centaur_prompt(TINY, None, A, rows)
    with pytest.raises(TypeError):
        agent_prompt(TINY, rows)


# -- replies -------------------------------------------------------------------------------------------------------


def test_parse_reply_plain_and_fenced():
    assert parse_reply('{"DEPTH": 10}') == {"DEPTH": 10}
    assert parse_reply('Sure:\n```json\n{"DEPTH": 10}\n```\nGood luck') == {"DEPTH": 10}
    assert parse_reply('```\n{"DEPTH": 10}\n```') == {"DEPTH": 10}
    assert parse_reply('```json{"A": 1}``` and ```{"B": 2}```') == {"A": 1}  # the first fence only


@pytest.mark.parametrize("text", [
    "no json here",
    'prose before {"DEPTH": 10}',  # no fence: the whole reply must be JSON
    '``` json\n{"DEPTH": 10}\n```',  # "json" not right after the fence: left in, so not JSON
    "```",
    "[1, 2]",
    '```json\n"DEPTH"\n```',
])  # fmt: skip
def test_parse_reply_rejects_what_the_study_could_not_read(text):
    with pytest.raises(ValueError):
        parse_reply(text)


def test_clamp_defaults_clips_casts_and_sorts():
    got = clamp(SPACE, {"WINDOW_PATTERN": "XXXX", "DEPTH": 30.9, "HEAD_DIM": 200.9, "EMBEDDING_LR": "0.5",
                        "MATRIX_LR": -1, "ASPECT_RATIO": True, "UNKNOWN": 1})
    assert list(got) == sorted(p.name for p in SPACE.params)
    assert got["WINDOW_PATTERN"] == "XXXX"  # categories are not checked
    assert got["DEPTH"] == 24 and got["HEAD_DIM"] == 200 and got["ASPECT_RATIO"] == 32  # int() truncates, clipped
    assert got["EMBEDDING_LR"] == 0.5 and got["MATRIX_LR"] == 0.005
    assert isinstance(got["MATRIX_LR"], float)
    given = {"WINDOW_PATTERN", "DEPTH", "HEAD_DIM", "EMBEDDING_LR", "MATRIX_LR", "ASPECT_RATIO"}
    assert all(got[n] == d for n, d in SPACE.default().items() if n not in given)  # missing: the default
    assert clamp(SPACE, {}) == SPACE.default()


@pytest.mark.parametrize("value", ["deep", None, [8], "8.0"])
def test_clamp_raises_on_what_does_not_cast(value):
    with pytest.raises((ValueError, TypeError)):
        clamp(SPACE, {"DEPTH": value})


def test_snap_pow2_nearest_with_ties_to_the_lower():
    got = snap_pow2(SPACE, {"HEAD_DIM": 96, "DEVICE_BATCH_SIZE": 192, "TOTAL_BATCH_SIZE": 700000, "DEPTH": 7,
                            "WINDOW_PATTERN": "SSSL"}, 2048)
    assert got == {"HEAD_DIM": 64, "DEVICE_BATCH_SIZE": 128, "TOTAL_BATCH_SIZE": 524288, "DEPTH": 7,
                   "WINDOW_PATTERN": "SSSL"}
    assert snap_pow2(SPACE, {"HEAD_DIM": 97}, 2048) == {"HEAD_DIM": 128}
    assert snap_pow2(SPACE, {"HEAD_DIM": 95.9}, 2048) == {"HEAD_DIM": 64}  # int() first: 95, nearer 64
    assert snap_pow2(SPACE, {"HEAD_DIM": 0.3}, 2048) == {"HEAD_DIM": 1}  # bounds are the clamp's business
    assert snap_pow2(SPACE, {"HEAD_DIM": "big"}, 2048) == {"HEAD_DIM": "big"}


def test_snap_pow2_raises_the_total_batch_to_a_device_batch_of_sequences():
    config = {"DEVICE_BATCH_SIZE": 256, "TOTAL_BATCH_SIZE": 65536}
    assert snap_pow2(SPACE, config, 2048)["TOTAL_BATCH_SIZE"] == 256 * 2048
    assert snap_pow2(SPACE, config, 1024)["TOTAL_BATCH_SIZE"] == 256 * 1024
    assert snap_pow2(SPACE, config, 128)["TOTAL_BATCH_SIZE"] == 65536  # already enough
    no_total = Space("s", {p.name: {"type": p.type, "key": p.key, "low": p.low, "high": p.high, "log": p.log,
                                    "pow2": p.pow2, "default": p.default}
                           for p in SPACE.params if p.name == "DEVICE_BATCH_SIZE"})  # fmt: skip
    assert snap_pow2(no_total, config, 2048) == config  # the rule needs both parameters in the space
