"""The corpus, tokenizer, token cache and batch pipelines, on real (small) data."""

import itertools
import json
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.data import (
    LAYOUTS,
    SPECIAL_TOKENS,
    DataConfig,
    DataError,
    PackedRows,
    _pystdlib_source,
    document_spans,
    load_corpus,
    train_batches,
    val_batches,
)

VOCAB = 512
SAMPLES = [
    "def f(x):\n    return x + 1\n",
    "naïve café — 日本語 🐍 Ünïcödé\n",
    "  \t tabs\r\nand   spaces  ",
    "x" * 300,
]


@pytest.fixture(scope="module")
def stdlib_cfg(tmp_path_factory):
    return DataConfig(cache_dir=str(tmp_path_factory.mktemp("cache")), max_train_bytes=1_000_000)


@pytest.fixture(scope="module")
def corpus(stdlib_cfg):
    return load_corpus(stdlib_cfg, VOCAB)


def shard_mtimes(cfg, key):
    return {p.name: p.stat().st_mtime_ns for p in (Path(cfg.cache_dir) / key).iterdir()}


# --- the pystdlib corpus ------------------------------------------------------------------------------------


def test_stdlib_split_is_deterministic_disjoint_and_skips_tests():
    a, b = _pystdlib_source(0.1), _pystdlib_source(0.1)
    assert a.train_files == b.train_files and a.val_files == b.val_files
    train, val = set(a.train_files), set(a.val_files)
    assert not train & val
    assert 0.05 < len(val) / (len(train) + len(val)) < 0.15
    assert any(p.name == "os.py" for p in train | val)
    skipped = {"test", "tests", "idle_test", "site-packages"}
    assert all(skipped.isdisjoint(p.parts) for p in train | val)


def test_stdlib_split_does_not_depend_on_the_process():
    script = "import json, model.data as d; print(json.dumps(list(map(str, d._pystdlib_source(0.1).val_files))))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == [str(p) for p in _pystdlib_source(0.1).val_files]


def test_second_load_reads_the_cache(stdlib_cfg, corpus, capfd):
    before = shard_mtimes(stdlib_cfg, corpus.key)
    capfd.readouterr()
    again = load_corpus(stdlib_cfg, VOCAB)
    assert capfd.readouterr().err == ""  # no build progress: nothing was rebuilt
    assert shard_mtimes(stdlib_cfg, corpus.key) == before
    assert again.key == corpus.key
    np.testing.assert_array_equal(again.train_tokens, corpus.train_tokens)
    np.testing.assert_array_equal(again.val_tokens, corpus.val_tokens)
    np.testing.assert_array_equal(again.token_bytes, corpus.token_bytes)
    assert not [p for p in (Path(stdlib_cfg.cache_dir) / corpus.key).iterdir() if p.name.startswith(".tmp")]


def test_cache_key_follows_the_inputs(stdlib_cfg, corpus):
    assert str(VOCAB) in corpus.key
    other_cap = load_corpus(replace(stdlib_cfg, max_train_bytes=200_000), VOCAB)
    assert other_cap.key != corpus.key
    assert len(other_cap.train_tokens) < len(corpus.train_tokens)


def test_shards_are_memory_mapped_token_ids(corpus):
    for tokens in (corpus.train_tokens, corpus.val_tokens):
        assert isinstance(tokens, np.memmap) and tokens.ndim == 1 and tokens.dtype == np.uint16
        assert tokens.max() < VOCAB
    bos = corpus.tokenizer.bos_token_id
    assert corpus.train_tokens[0] == bos and corpus.val_tokens[0] == bos  # every document starts with BOS
    assert (corpus.val_tokens == bos).sum() > 10


def test_max_train_bytes_caps_the_training_text(stdlib_cfg, corpus):
    text = corpus.tokenizer.decode(corpus.train_tokens, skip_special_tokens=True)
    assert 0.99 * stdlib_cfg.max_train_bytes <= len(text.encode()) <= stdlib_cfg.max_train_bytes


# --- the tokenizer ------------------------------------------------------------------------------------------


def test_tokenizer_round_trips_text(corpus):
    tok = corpus.tokenizer
    assert len(tok) == VOCAB
    for text in SAMPLES:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert len(tok.encode("    return self", add_special_tokens=False)) < len("    return self")  # merges learnt


def test_special_tokens_come_first_and_count_no_bytes(corpus):
    tok = corpus.tokenizer
    assert tok.convert_ids_to_tokens(list(range(len(SPECIAL_TOKENS)))) == list(SPECIAL_TOKENS)
    assert sorted(tok.all_special_ids) == list(range(len(SPECIAL_TOKENS)))
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    assert corpus.token_bytes.dtype == np.int32 and corpus.token_bytes.shape == (VOCAB,)
    assert not corpus.token_bytes[: len(SPECIAL_TOKENS)].any()
    assert (corpus.token_bytes[len(SPECIAL_TOKENS) :] >= 1).all()


def test_token_bytes_sum_to_the_utf8_length(corpus):
    tok = corpus.tokenizer
    for text in SAMPLES:
        ids = tok.encode(text, add_special_tokens=False)
        assert corpus.token_bytes[ids].sum() == len(text.encode("utf-8"))
    # the held-out shard as the evaluation sees it: bytes of all targets == UTF-8 length of the decoded text
    held_out = np.asarray(corpus.val_tokens)
    text = tok.decode(held_out, skip_special_tokens=True)
    assert not text.isascii()  # the stdlib has non-ASCII text, so multi-byte tokens are exercised
    assert corpus.token_bytes[held_out].sum() == len(text.encode("utf-8"))


# --- batches ------------------------------------------------------------------------------------------------


def take(iterator, n):
    return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_batches_shape_and_dtype(corpus, layout):
    for batch in take(train_batches(corpus.train_tokens, 4, 32, 0, layout), 3):
        assert batch.shape == (4, 33) and batch.dtype == np.int32
        assert batch.min() >= 0 and batch.max() < VOCAB


@pytest.mark.parametrize("layout", LAYOUTS)
def test_train_batches_are_reproducible_per_seed(corpus, layout):
    first = take(train_batches(corpus.train_tokens, 4, 32, 7, layout), 5)
    again = take(train_batches(corpus.train_tokens, 4, 32, 7, layout), 5)
    other = take(train_batches(corpus.train_tokens, 4, 32, 8, layout), 5)
    assert all((a == b).all() for a, b in zip(first, again))
    assert not all((a == b).all() for a, b in zip(first, other))


def test_train_batches_cover_each_epoch_and_reshuffle():
    tokens = np.arange(20, dtype=np.uint16)
    seq_len = 3
    n_starts = len(tokens) - seq_len
    epoch1, epoch2 = (batch[:, 0] for batch in take(train_batches(tokens, n_starts, seq_len, 0, "windows"), 2))
    assert sorted(epoch1) == sorted(epoch2) == list(range(n_starts))  # every start once per epoch
    assert list(epoch1) != list(epoch2)
    for batch in take(train_batches(tokens, 5, seq_len, 1, "windows"), 10):  # rows are contiguous windows
        np.testing.assert_array_equal(batch, batch[:, :1] + np.arange(seq_len + 1))


def test_train_batches_refuse_too_few_tokens():
    with pytest.raises(DataError, match="too few"):
        train_batches(np.arange(10, dtype=np.uint16), 2, 10, 0, "windows")
    with pytest.raises(DataError, match="holds no document"):
        train_batches(np.arange(1, 10, dtype=np.uint16), 2, 10, 0, "packed")


def test_val_batches_are_fixed_consecutive_windows(corpus):
    tokens = corpus.val_tokens
    batch_size, seq_len, n_tokens = 3, 16, 1000  # 1000 / 48 -> 21 batches, the last one partly beyond n_tokens
    batches = list(val_batches(tokens, batch_size, seq_len, n_tokens, "windows"))
    assert len(batches) == 21
    assert all(b.shape == (3, 17) and b.dtype == np.int32 for b in batches)
    assert all((a == b).all() for a, b in zip(batches, val_batches(tokens, batch_size, seq_len, n_tokens, "windows")))
    rows = np.concatenate(batches)
    np.testing.assert_array_equal(rows[:, :-1].ravel(), tokens[: len(rows) * seq_len])
    np.testing.assert_array_equal(rows[:-1, -1], rows[1:, 0])  # each window ends where the next begins


def test_val_batches_refuse_a_small_held_out_split():
    with pytest.raises(DataError, match=r"held-out split has 100 tokens .* needs 129"):
        val_batches(np.zeros(100, np.uint16), 2, 64, 128, "windows")


def test_an_unknown_layout_is_refused_in_one_line(corpus):
    for make in (lambda: train_batches(corpus.train_tokens, 2, 8, 0, "rows"),
                 lambda: val_batches(corpus.val_tokens, 2, 8, 16, "rows")):  # fmt: skip
        with pytest.raises(DataError, match=r"^unknown data.layout='rows'; choose one of: packed, windows$"):
            make()


# --- packed rows ----------------------------------------------------------------------------------------------

BOS = 0


def synthetic_tokens(n_docs: int, row_len: int, seed: int) -> np.ndarray:
    """Documents of varied lengths, each <|bos|> then ids 4..: most shorter than a row, some a few rows long, a
    few of length 1 (a bare <|bos|>)."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(3, n_docs, p=[0.7, 0.2, 0.1])
    lengths = np.where(kinds == 0, rng.integers(1, row_len // 2 + 2, n_docs),
                       np.where(kinds == 1, rng.integers(row_len // 2, row_len + 2, n_docs),
                                rng.integers(row_len, 4 * row_len, n_docs)))  # fmt: skip
    return np.concatenate([np.r_[BOS, rng.integers(4, 500, n - 1)] for n in lengths]).astype(np.uint16)


def split_documents(tokens) -> list[list[int]]:
    docs = []
    for t in tokens.tolist():
        if t == BOS:
            docs.append([])
        docs[-1].append(t)
    return docs


def reference_rows(docs, stream, row_len, buffer_size, refill, n_rows):
    """autoresearch's best-fit packing written as its straight loops, on lists; a row the stream cannot
    finish ends the output."""
    buffer, rows = [], []
    stream = iter(stream)
    while len(rows) < n_rows:
        row = []
        while len(row) < row_len:
            while len(buffer) < buffer_size:
                batch = [docs[d] for d in itertools.islice(stream, refill)]
                if not batch:
                    break
                buffer.extend(batch)
            if not buffer:
                return rows
            remaining = row_len - len(row)
            best, best_len = -1, 0
            for i, doc in enumerate(buffer):
                if best_len < len(doc) <= remaining:
                    best, best_len = i, len(doc)
            if best >= 0:
                row.extend(buffer.pop(best))
            else:
                shortest = min(range(len(buffer)), key=lambda i: len(buffer[i]))
                row.extend(buffer.pop(shortest)[:remaining])
        rows.append(row)
    return rows


def packer(tokens, row_len, buffer_size, refill, shuffle_seed=None):
    """PackedRows over the documents of `tokens`, endlessly, in stored order or reshuffled every epoch."""
    starts, lengths = document_spans(tokens)
    order = grain.MapDataset.range(len(starts))
    if shuffle_seed is not None:
        order = order.shuffle(seed=shuffle_seed)
    return iter(PackedRows(order.repeat().to_iter_dataset(), tokens, starts, lengths, row_len, buffer_size, refill))


def test_document_spans_split_at_every_bos():
    tokens = np.array([0, 5, 6, 0, 0, 7, 0, 8, 9, 9], np.uint16)
    starts, lengths = document_spans(tokens)
    np.testing.assert_array_equal(starts, [0, 3, 4, 6])
    np.testing.assert_array_equal(lengths, [3, 1, 2, 4])


@pytest.mark.parametrize("row_len, buffer_size, refill", [(9, 1, 1), (17, 5, 2), (33, 40, 16), (65, 300, 128),
                                                          (257, 1000, 128)])  # fmt: skip
def test_packing_matches_autoresearchs_best_fit(row_len, buffer_size, refill):
    tokens = synthetic_tokens(600, row_len, seed=row_len)
    docs = split_documents(tokens)
    n_rows = 300
    expected = reference_rows(docs, itertools.cycle(range(len(docs))), row_len, buffer_size, refill, n_rows)
    got = take(packer(tokens, row_len, buffer_size, refill), n_rows)
    assert len(expected) == n_rows
    for i, (row, want) in enumerate(zip(got, expected)):
        assert row.shape == (row_len,) and row[0] == BOS, i  # full, and starts a document
        assert row.tolist() == want, i


def test_packing_defaults_are_autoresearchs():
    tokens = synthetic_tokens(3000, 129, seed=1)
    starts, lengths = document_spans(tokens)
    order = grain.MapDataset.range(len(starts)).repeat().to_iter_dataset()
    got = take(iter(PackedRows(order, tokens, starts, lengths, 129)), 50)
    expected = reference_rows(split_documents(tokens), itertools.cycle(range(len(starts))), 129, 1000, 128, 50)
    assert [row.tolist() for row in got] == expected


def test_packed_training_rows_are_full_bos_aligned_and_whole_where_they_fit(corpus):
    batches = take(train_batches(corpus.train_tokens, 8, 64, 3, "packed"), 20)
    rows = np.concatenate(batches)
    assert (rows[:, 0] == BOS).all()
    docs = {tuple(d) for d in split_documents(np.asarray(corpus.train_tokens))}
    for row in rows:  # every piece is a document, whole, except the last which may be its beginning
        pieces = np.split(row, np.flatnonzero(row == BOS)[1:])
        assert all(tuple(p) in docs for p in pieces[:-1])


def test_packed_training_draws_every_document_once_per_epoch_reshuffled():
    # Every document exactly one row long: all fit, ties go to buffer order, so rows come in stream order.
    n_docs, seq_len = 50, 7
    tokens = np.concatenate([np.r_[BOS, np.full(seq_len, 4 + d)] for d in range(n_docs)]).astype(np.uint16)
    rows = np.concatenate(take(train_batches(tokens, 10, seq_len, 0, "packed"), 3 * n_docs // 10))
    order = rows[:, 1] - 4
    epochs = order.reshape(3, n_docs)
    for epoch in epochs:
        assert sorted(epoch) == list(range(n_docs))
    assert len({tuple(e) for e in epochs}) == 3  # each epoch in its own order


def test_packing_resumes_from_its_state():
    tokens = synthetic_tokens(400, 33, seed=4)
    rows = packer(tokens, 33, 40, 16, shuffle_seed=9)
    take(rows, 37)
    state = rows.get_state()
    # topped up to 40 or more (by 16) before each document is placed, one fewer after the row's last one
    assert 39 <= len(state["buffer"]) < 40 + 16 and all(isinstance(d, int) for d in state["buffer"])
    json_state = json.loads(json.dumps(state))  # plain data: it can go into a checkpoint
    expected = take(rows, 60)
    resumed = packer(tokens, 33, 40, 16, shuffle_seed=9)
    resumed.set_state(json_state)
    assert all((a == b).all() for a, b in zip(take(resumed, 60), expected))


def test_packed_val_batches_are_the_stored_documents_packed_in_order():
    tokens = synthetic_tokens(400, 33, seed=5)
    batch_size, seq_len, n_tokens = 4, 32, 2000  # 2000 / 128 -> 16 batches = 64 rows
    batches = list(val_batches(tokens, batch_size, seq_len, n_tokens, "packed"))
    assert len(batches) == 16 and all(b.shape == (4, 33) and b.dtype == np.int32 for b in batches)
    assert all((a == b).all() for a, b in zip(batches, val_batches(tokens, batch_size, seq_len, n_tokens, "packed")))
    docs = split_documents(tokens)
    expected = reference_rows(docs, range(len(docs)), seq_len + 1, 1000, 128, 64)
    assert np.concatenate(batches).tolist() == expected


def test_packed_val_batches_use_one_pass_and_refuse_a_small_split():
    tokens = synthetic_tokens(30, 17, seed=6)
    docs = split_documents(tokens)
    n_rows = len(reference_rows(docs, range(len(docs)), 17, 1000, 128, 10**6))  # what one pass can fill
    assert len(list(val_batches(tokens, 1, 16, 16 * n_rows, "packed"))) == n_rows
    message = rf"^the held-out split's 30 documents pack into {n_rows} rows of 17 tokens .*needs {n_rows + 1}; lower"
    with pytest.raises(DataError, match=message + r" the model's eval_tokens or hold out more text"):
        val_batches(tokens, 1, 16, 16 * n_rows + 1, "packed")


# --- parquet ------------------------------------------------------------------------------------------------

TRAIN_DOCS = [f"The quick brown fox {i} jumps over the lazy dog. Ça va très bien!" for i in range(200)]
VAL_DOCS = ["A held-out sentence about zebras.", "Another one: ünïcödé and 🦓."]


@pytest.fixture
def parquet_cfg(tmp_path):
    pq.write_table(pa.table({"text": TRAIN_DOCS, "id": list(range(len(TRAIN_DOCS)))}), tmp_path / "train-0.parquet")
    pq.write_table(pa.table({"text": VAL_DOCS + [None, ""]}), tmp_path / "val-0.parquet")
    return DataConfig(
        source="parquet",
        train_files=[str(tmp_path / "train-*.parquet")],
        val_files=[str(tmp_path / "val-0.parquet")],
        cache_dir=str(tmp_path / "cache"),
    )


def test_parquet_corpus_loads_and_decodes_back(parquet_cfg):
    corpus = load_corpus(parquet_cfg, 300)
    tok = corpus.tokenizer
    train_text = tok.decode(corpus.train_tokens)
    assert train_text.split("<|bos|>")[1:] == TRAIN_DOCS  # all documents, in order, each after a BOS
    assert tok.decode(corpus.val_tokens, skip_special_tokens=True) == "".join(VAL_DOCS)  # nulls, empties skipped
    held_out = np.asarray(corpus.val_tokens)
    assert corpus.token_bytes[held_out].sum() == len("".join(VAL_DOCS).encode())


def test_parquet_errors_say_what_to_fix(parquet_cfg, tmp_path):
    with pytest.raises(DataError, match=r"data.train_files: no file matches .*nothing-\*\.parquet"):
        load_corpus(replace(parquet_cfg, train_files=[str(tmp_path / "nothing-*.parquet")]), 300)
    with pytest.raises(DataError, match=r"has no column 'content' \(it has: text, id\); set data.text_column"):
        load_corpus(replace(parquet_cfg, text_column="content"), 300)
    with pytest.raises(DataError, match="data.val_files is empty"):
        load_corpus(replace(parquet_cfg, val_files=[]), 300)
    with pytest.raises(DataError, match="in both data.train_files and data.val_files"):
        load_corpus(replace(parquet_cfg, val_files=parquet_cfg.train_files), 300)
    with pytest.raises(DataError, match="unknown data.source='hub'"):
        load_corpus(replace(parquet_cfg, source="hub"), 300)


def test_empty_held_out_split_is_refused(parquet_cfg, tmp_path):
    pq.write_table(pa.table({"text": pa.array([None, ""], pa.string())}), tmp_path / "empty.parquet")
    with pytest.raises(DataError, match="val split holds no text"):
        load_corpus(replace(parquet_cfg, val_files=[str(tmp_path / "empty.parquet")]), 300)


def test_concurrent_builders_share_one_cache(parquet_cfg):
    results, errors = [], []

    def build():
        try:
            results.append(load_corpus(parquet_cfg, 300))
        except Exception as e:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for corpus in results[1:]:
        np.testing.assert_array_equal(corpus.train_tokens, results[0].train_tokens)
        np.testing.assert_array_equal(corpus.val_tokens, results[0].val_tokens)
    root = Path(parquet_cfg.cache_dir) / results[0].key
    assert sorted(p.name for p in root.iterdir()) == [".lock", "tokenizer", "train.npy", "val.npy"]


def test_yaml_configs_match_the_schema():
    from omegaconf import OmegaConf

    schema = OmegaConf.structured(DataConfig)
    configs = Path(__file__).parents[1] / "hydra_configs" / "data"
    stdlib = OmegaConf.to_object(OmegaConf.merge(schema, OmegaConf.load(configs / "pystdlib.yaml")))
    assert stdlib == DataConfig(layout="windows")  # the standard library's files are too long to pack (its YAML)
    raw = OmegaConf.load(configs / "parquet.yaml")
    assert OmegaConf.is_missing(raw, "train_files") and OmegaConf.is_missing(raw, "val_files")
    # merged onto the schema, `???` leaves the empty default, which load_corpus refuses with the key to set
    parquet = OmegaConf.to_object(OmegaConf.merge(schema, raw))
    assert parquet.source == "parquet" and parquet.text_column == "text"
    with pytest.raises(DataError, match="data.train_files is empty"):
        load_corpus(parquet, 300)


def test_the_gpt4_pretokenizer_keeps_digits_in_pairs_and_bytelevel_does_not(tmp_path):
    # Numbers that recur: a BPE merges their digits freely after GPT-2's split (ByteLevel), never past two digits
    # after autoresearch's \p{N}{1,2}. Either tokenizer round-trips the text and counts its bytes.
    docs = [f"order 123456 costs 987654 and {i}" for i in range(300)]
    pq.write_table(pa.table({"text": docs}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": ["order 123456 costs 987654"]}), tmp_path / "val.parquet")
    longest = {}
    for kind in ("gpt4", "bytelevel"):
        cfg = DataConfig(source="parquet", train_files=[str(tmp_path / "train.parquet")],
                         val_files=[str(tmp_path / "val.parquet")], cache_dir=str(tmp_path / "cache"),
                         pretokenizer=kind)  # fmt: skip
        corpus = load_corpus(cfg, 400)
        pieces = [corpus.tokenizer.decode([t]) for t in corpus.val_tokens]
        assert "".join(pieces).endswith("order 123456 costs 987654")
        assert corpus.token_bytes[np.asarray(corpus.val_tokens)].sum() == len(b"order 123456 costs 987654")
        longest[kind] = max(len(p.strip()) for p in pieces if p.strip().isdigit())
    assert longest["gpt4"] <= 2 < longest["bytelevel"], longest
    with pytest.raises(DataError, match="unknown data.pretokenizer='gpt2'; choose one of: gpt4, bytelevel"):
        load_corpus(replace(cfg, pretokenizer="gpt2", cache_dir=str(tmp_path / "other")), 400)


def test_a_run_saved_before_a_setting_existed_loads_with_the_value_it_ran_with(tmp_path):
    from omegaconf import OmegaConf

    from model.config import TrainConfig, load_config

    old = OmegaConf.to_container(OmegaConf.structured(TrainConfig()))
    for group, key in (("data", "layout"), ("data", "pretokenizer"), ("optim", "muon"), ("optim", "embedding_dtype")):
        del old[group][key]
    (tmp_path / "old.yaml").write_text(OmegaConf.to_yaml(old))
    cfg = load_config(tmp_path / "old.yaml")
    assert (cfg.data.layout, cfg.data.pretokenizer, cfg.optim.muon, cfg.optim.embedding_dtype) == (
        "windows", "bytelevel", "optax", "float32")
    (tmp_path / "new.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(TrainConfig())))
    assert load_config(tmp_path / "new.yaml") == TrainConfig()
