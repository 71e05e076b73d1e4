"""Training text: a corpus, the byte-level BPE tokenizer trained on it, and the batches the trainer reads.

The corpus is either the running Python's standard library (embedded, nothing to download) or the text column of
parquet files (e.g. FineWeb / climbmix shards). The tokenizer and the tokenized splits are built once and cached
under `cache_dir/<key>/`, where the key fingerprints everything that determines the tokens:

    <key>/tokenizer/   tokenizer.json + tokenizer_config.json (transformers `save_pretrained`)
    <key>/train.npy    1-D token ids, each document preceded by <|bos|>
    <key>/val.npy      the same for the held-out split
    <key>/.lock        taken while building, so concurrent trials build once and never see half a cache

The trainer reads rows of seq_len + 1 tokens in one of two layouts (`data.layout`). `packed`, autoresearch's:
every row starts at a document's <|bos|> and is filled with whole documents by best fit from a buffer of about a
thousand, the last one cropped to fill the row exactly; training draws the documents in an order reshuffled every
epoch, the evaluation packs the held-out documents in stored order. `windows`: rows are windows at any offset,
crossing document boundaries, at shuffled starts for training and consecutive from the split's start for the
evaluation. Either way the evaluation set is fixed, so runs compare.
"""

import contextlib
import fcntl
import functools
import glob
import hashlib
import itertools
import json
import os
import shutil
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import grain
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|pad|>", "<|reserved_0|>")  # ids 0..3, in this order
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)  # every byte plus the specials

_FORMAT = 1  # part of the cache key: bump it when the cached files change meaning
# How text is cut into words before BPE merges within them: autoresearch's GPT-4-style pattern (digits in runs of
# at most two, \p{N}{1,2}, where GPT-4 has three), or ByteLevel's own GPT-2 pattern (jaxhpo's first tokenizer).
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,2}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
)
PRETOKENIZERS = ("gpt4", "bytelevel")
LAYOUTS = ("packed", "windows")
# autoresearch's packing: best fit among at least this many documents, topped up this many at a time (the
# batch size of its tokenizer calls), so the buffer holds 1000 to 1127.
PACK_BUFFER_DOCS = 1000
PACK_REFILL_DOCS = 128
_BOS_ID = 0  # SPECIAL_TOKENS[0]; specials in the text are encoded literally, so this id only separates documents
# Tokens compared per step when finding the documents of a memory-mapped split: bounds the memory the scan takes.
_SCAN_CHUNK_TOKENS = 2**24
# BPE is trained on at most this much text: the whole stdlib training split, a fair sample of a web corpus, and
# about 10 s on 2 cores.
_TOKENIZER_TRAIN_BYTES = 32 * 2**20
# Text handed to one batched encode call: enough documents to keep every core busy, little enough to bound memory.
_ENCODE_CHUNK_CHARS = 8 * 2**20
_STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


class DataError(ValueError):
    """Unusable data settings or input; the message is one line saying what is wrong and how to fix it."""


@dataclass
class DataConfig:
    """The `data/` config group: where the text comes from and where its tokenization is cached."""

    source: str = "pystdlib"  # "pystdlib" | "parquet"
    train_files: list[str] = field(default_factory=list)  # parquet: paths or glob patterns
    val_files: list[str] = field(default_factory=list)  # parquet: paths or glob patterns
    text_column: str = "text"
    val_fraction: float = 0.1  # pystdlib: share of files held out
    max_train_bytes: int | None = None  # optional cap on training text (None = all)
    cache_dir: str = "~/.cache/jaxhpo"  # tokenizer + token shards cached here
    pretokenizer: str = "gpt4"  # gpt4: autoresearch's split pattern; bytelevel: GPT-2's, as ByteLevel splits
    # packed: rows of whole documents, each row starting at a <|bos|>, best fit (autoresearch's; both the training
    # and the evaluation rows); windows: rows at any offset, crossing documents. The cache does not depend on it.
    layout: str = "packed"


@dataclass
class Corpus:
    """A tokenized corpus, as the trainer consumes it, and its tokenizer for anyone who wants text."""

    train_tokens: np.ndarray  # 1-D uint16 (uint32 for vocabularies over 65536), memory-mapped from the cache
    val_tokens: np.ndarray
    token_bytes: np.ndarray  # int32 [vocab_size]: UTF-8 bytes each id decodes to; 0 for special and unused ids
    key: str  # the cache folder's name
    root: Path  # the cache folder

    @functools.cached_property
    def tokenizer(self) -> "PreTrainedTokenizerFast":
        """transformers' tokenizer for this corpus, loaded on first use: importing transformers takes over a
        second, and a trial needs only the token ids and their byte lengths."""
        return _tokenizer_class().from_pretrained(str(self.root / "tokenizer"))


def _tokenizer_class() -> "type[PreTrainedTokenizerFast]":
    # transformers is used for its tokenizer class only; its "PyTorch was not found" notice is noise here.
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast


@dataclass
class _Source:
    """A corpus's files per split and how to read the documents out of one file."""

    train_files: list[Path]
    val_files: list[Path]
    read: Callable[[Path], Iterator[str]]

    def documents(self, files: list[Path]) -> Iterator[str]:
        return itertools.chain.from_iterable(map(self.read, files))


def load_corpus(cfg: DataConfig, vocab_size: int) -> Corpus:
    """The tokenizer and token shards for `cfg`, from the cache, building what is missing first."""
    if vocab_size < MIN_VOCAB_SIZE:
        raise DataError(f"vocab_size={vocab_size} must be at least {MIN_VOCAB_SIZE} (256 bytes + the specials)")
    if cfg.max_train_bytes is not None and cfg.max_train_bytes < 1:
        raise DataError(f"data.max_train_bytes={cfg.max_train_bytes} must be positive, or null for all the text")
    source = _resolve_source(cfg)
    key = f"{cfg.source}-v{vocab_size}-{_fingerprint(cfg, source)}"
    root = Path(cfg.cache_dir).expanduser() / key
    if not _is_complete(root):
        root.mkdir(parents=True, exist_ok=True)
        with _exclusive(root):
            _build(root, cfg, source, vocab_size)
    return Corpus(
        train_tokens=np.load(root / "train.npy", mmap_mode="r"),
        val_tokens=np.load(root / "val.npy", mmap_mode="r"),
        token_bytes=_token_bytes(Tokenizer.from_file(str(root / "tokenizer" / "tokenizer.json")), vocab_size),
        key=key,
        root=root,
    )


def train_batches(tokens: np.ndarray, batch_size: int, seq_len: int, seed: int, layout: str) -> Iterator[np.ndarray]:
    """Endless int32 (batch_size, seq_len + 1) training rows in `layout`, in an order reshuffled every epoch."""
    _check_layout(layout)
    # grain seeds epoch e with seed + e, so seeds 0 and 1 would replay each other's epochs one apart; a hashed
    # seed keeps nearby seeds unrelated.
    shuffle_seed = int(np.random.SeedSequence(seed).generate_state(1)[0])
    if layout == "windows":
        return _window_batches(tokens, batch_size, seq_len, shuffle_seed)
    starts, lengths = document_spans(tokens)
    if not len(starts):
        raise DataError("the training split holds no document: pass token ids with each one preceded by <|bos|> (id 0)")
    order = grain.MapDataset.range(len(starts)).shuffle(seed=shuffle_seed).repeat().to_iter_dataset(_NO_THREADS)
    rows = PackedRows(order, tokens, starts, lengths, seq_len + 1)
    batches = rows.batch(batch_size, batch_fn=_stack_int32)
    # One background thread packs the next batches while the accelerator works on this one.
    return iter(grain.experimental.ThreadPrefetchIterDataset(batches, prefetch_buffer_size=4))


def _window_batches(tokens: np.ndarray, batch_size: int, seq_len: int, shuffle_seed: int) -> Iterator[np.ndarray]:
    n_starts = len(tokens) - seq_len
    if n_starts < 1:
        raise DataError(f"the training split has {len(tokens):,} tokens, too few for one window of {seq_len + 1}")
    window = np.arange(seq_len + 1)
    dataset = (
        grain.MapDataset.range(n_starts)
        .shuffle(seed=shuffle_seed)
        .repeat()
        .batch(batch_size)
        .map(lambda starts: np.asarray(tokens[starts[:, None] + window], dtype=np.int32))
    )
    # One background thread computes the next batches while the accelerator works on this one.
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)))


def val_batches(tokens: np.ndarray, batch_size: int, seq_len: int, n_tokens: int, layout: str) -> Iterator[np.ndarray]:
    """The fixed evaluation set: ceil(n_tokens / (batch_size * seq_len)) int32 (batch_size, seq_len + 1) batches
    of `tokens` in `layout`, from the start of the split."""
    _check_layout(layout)
    if n_tokens < 1:
        raise DataError(f"the evaluation needs a positive number of tokens, got {n_tokens}")
    per_batch = batch_size * seq_len
    n_batches = -(-n_tokens // per_batch)
    if layout == "packed":
        return _packed_val_batches(tokens, batch_size, seq_len, n_tokens, n_batches)
    needed = n_batches * per_batch + 1
    if len(tokens) < needed:
        raise DataError(
            f"the held-out split has {len(tokens):,} tokens but evaluating {n_tokens:,} tokens as {n_batches} "
            f"batches of {batch_size}x{seq_len} needs {needed:,}; lower the model's eval_tokens or hold out more "
            "text (data.val_fraction, data.val_files)"
        )
    rows = np.arange(batch_size)[:, None] * seq_len + np.arange(seq_len + 1)
    return (np.asarray(tokens[b * per_batch + rows], dtype=np.int32) for b in range(n_batches))


def _packed_val_batches(
    tokens: np.ndarray, batch_size: int, seq_len: int, n_tokens: int, n_batches: int
) -> Iterator[np.ndarray]:
    starts, lengths = document_spans(tokens)
    order = grain.MapDataset.range(len(starts)).to_iter_dataset(_NO_THREADS)  # stored order, one pass
    needed = n_batches * batch_size
    # Packed now rather than batch by batch, so a split too small is refused before any scoring starts.
    rows = list(itertools.islice(PackedRows(order, tokens, starts, lengths, seq_len + 1), needed))
    if len(rows) < needed:
        raise DataError(
            f"the held-out split's {len(starts):,} documents pack into {len(rows):,} rows of {seq_len + 1} tokens "
            f"but evaluating {n_tokens:,} tokens as {n_batches} batches of {batch_size}x{seq_len} needs {needed:,}; "
            "lower the model's eval_tokens or hold out more text (data.val_fraction, data.val_files)"
        )
    return (_stack_int32(rows[b * batch_size : (b + 1) * batch_size]) for b in range(n_batches))


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise DataError(f"unknown data.layout={layout!r}; choose one of: {', '.join(LAYOUTS)}")


# The packer pulls document ids one at a time from the thread it runs on: a pool behind it would only add handoffs.
_NO_THREADS = grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)


def _stack_int32(rows: list[np.ndarray]) -> np.ndarray:
    return np.stack(rows).astype(np.int32)


def document_spans(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(start, length) of every document of a split, as int64 arrays: the spans from each <|bos|> to the next."""
    found = []
    for offset in range(0, len(tokens), _SCAN_CHUNK_TOKENS):
        chunk = np.asarray(tokens[offset : offset + _SCAN_CHUNK_TOKENS])
        found.append(np.flatnonzero(chunk == _BOS_ID) + offset)
    starts = np.concatenate(found) if found else np.zeros(0, np.int64)
    return starts, np.diff(starts, append=len(tokens))


class PackedRows(grain.IterDataset):
    """Rows of `row_len` tokens packed from documents whose ids the parent dataset yields, by autoresearch's best
    fit: each row starts empty; while it has room, the buffer is topped up with the next `refill` ids whenever it
    holds fewer than `buffer_size`, then the longest buffered document that fits the room left is copied whole
    (the first in buffer order on ties) or, if none fits, the shortest is cropped to fill the row. Every row is
    full and starts at a document's <|bos|>. Once a finite parent runs out, the buffer drains and a row the last
    documents cannot fill is dropped."""

    def __init__(
        self,
        parent: grain.IterDataset,
        tokens: np.ndarray,
        starts: np.ndarray,
        lengths: np.ndarray,
        row_len: int,
        buffer_size: int = PACK_BUFFER_DOCS,
        refill: int = PACK_REFILL_DOCS,
    ):
        super().__init__(parent)
        if row_len < 1 or buffer_size < 1 or refill < 1:
            raise DataError(f"packing needs positive sizes, got row_len={row_len}, buffer_size={buffer_size}, "
                            f"refill={refill}")  # fmt: skip
        self._tokens, self._starts, self._lengths = tokens, starts, lengths
        self._row_len, self._buffer_size, self._refill = row_len, buffer_size, refill

    def __iter__(self) -> "_PackedRowsIterator":
        return _PackedRowsIterator(self._parent.__iter__(), self._tokens, self._starts, self._lengths, self._row_len,
                                   self._buffer_size, self._refill)  # fmt: skip

    def __str__(self) -> str:
        return f"PackedRows(row_len={self._row_len}, buffer_size={self._buffer_size}, refill={self._refill})"


class _PackedRowsIterator(grain.DatasetIterator):
    """PackedRows' iterator; its state is the parent's state plus the ids of the buffered documents."""

    def __init__(self, parent: grain.DatasetIterator, tokens: np.ndarray, starts: np.ndarray, lengths: np.ndarray,
                 row_len: int, buffer_size: int, refill: int):  # fmt: skip
        super().__init__(parent)
        self._tokens, self._starts, self._doc_lengths = tokens, starts, lengths
        self._row_len, self._buffer_size, self._refill = row_len, buffer_size, refill
        # The buffer in order, as two arrays (ids, and lengths for the vectorised search) and a fill count:
        # removing one shifts the tail left, which keeps the order the tie rules need.
        self._ids = np.zeros(buffer_size + refill, np.int64)
        self._lengths = np.zeros(buffer_size + refill, np.int64)
        self._count = 0
        self._exhausted = False

    def __next__(self) -> np.ndarray:
        row = np.empty(self._row_len, self._tokens.dtype)
        pos = 0
        while pos < self._row_len:
            self._top_up()
            if not self._count:
                raise StopIteration
            room = self._row_len - pos
            lengths = self._lengths[: self._count]
            fitting = np.where(lengths <= room, lengths, 0)  # every document holds at least its <|bos|>
            i = int(fitting.argmax())  # argmax and argmin return the first index: buffer order breaks ties
            if not fitting[i]:
                i = int(lengths.argmin())
            take = min(int(lengths[i]), room)
            start = int(self._starts[self._ids[i]])
            row[pos : pos + take] = self._tokens[start : start + take]
            pos += take
            self._remove(i)
        return row

    def _top_up(self) -> None:
        while self._count < self._buffer_size and not self._exhausted:
            for _ in range(self._refill):
                try:
                    doc = next(self._parent)
                except StopIteration:
                    self._exhausted = True
                    break
                self._ids[self._count] = doc
                self._lengths[self._count] = self._doc_lengths[doc]
                self._count += 1

    def _remove(self, i: int) -> None:
        n = self._count
        self._ids[i : n - 1] = self._ids[i + 1 : n]
        self._lengths[i : n - 1] = self._lengths[i + 1 : n]
        self._count = n - 1

    def get_state(self) -> dict:
        """The parent's state and the buffered document ids, in buffer order."""
        return {"parent": self._parent.get_state(), "buffer": self._ids[: self._count].tolist()}

    def set_state(self, state: dict) -> None:
        """Resume where `get_state` was taken."""
        self._parent.set_state(state["parent"])
        ids = np.asarray(state["buffer"], np.int64)
        self._count = len(ids)
        self._ids[: self._count] = ids
        self._lengths[: self._count] = self._doc_lengths[ids]
        self._exhausted = False  # an exhausted parent says so again on the next top-up


# --- sources ------------------------------------------------------------------------------------------------


def _resolve_source(cfg: DataConfig) -> _Source:
    if cfg.source == "pystdlib":
        return _pystdlib_source(cfg.val_fraction)
    if cfg.source == "parquet":
        return _parquet_source(cfg.train_files, cfg.val_files, cfg.text_column)
    raise DataError(f"unknown data.source={cfg.source!r}; use 'pystdlib' or 'parquet'")


def _pystdlib_source(val_fraction: float) -> _Source:
    if not 0 < val_fraction < 1:
        raise DataError(f"data.val_fraction={val_fraction} must be between 0 and 1 (exclusive)")
    root = Path(sysconfig.get_paths()["stdlib"])
    train, val = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP_DIRS]
        for name in filenames:
            if name.endswith(".py"):
                path = Path(dirpath, name)
                u = _unit_hash(path.relative_to(root).as_posix())
                (val if u < val_fraction else train).append((u, path))
    # Ordered by the hash rather than by name, so a byte cap or a short evaluation samples the whole library
    # instead of its alphabetically first packages.
    return _Source([p for _, p in sorted(train)], [p for _, p in sorted(val)], _read_python_file)


def _unit_hash(text: str) -> float:
    """A hash of `text` in [0, 1) that is the same in every process and on every machine (unlike `hash`)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


def _read_python_file(path: Path) -> Iterator[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return
    if text:
        yield text


def _parquet_source(train_patterns: Iterable[str], val_patterns: Iterable[str], column: str) -> _Source:
    train = _expand("data.train_files", train_patterns)
    val = _expand("data.val_files", val_patterns)
    shared = sorted(set(train) & set(val))
    if shared:
        raise DataError(f"{shared[0]} is in both data.train_files and data.val_files; hold out different files")
    for path in train + val:
        _check_text_column(path, column)
    return _Source(train, val, lambda path: _read_parquet_column(path, column))


def _expand(key: str, patterns: Iterable[str]) -> list[Path]:
    patterns = list(patterns)
    if not patterns:
        raise DataError(f"{key} is empty; list parquet files or glob patterns")
    files = []
    for pattern in patterns:
        matches = [Path(m).resolve() for m in sorted(glob.glob(os.path.expanduser(pattern), recursive=True))]
        matches = [m for m in matches if m.is_file()]
        if not matches:
            raise DataError(f"{key}: no file matches {pattern!r} (relative paths start at {os.getcwd()})")
        files += matches
    return list(dict.fromkeys(files))


def _check_text_column(path: Path, column: str) -> None:
    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{path} is not a readable parquet file: {str(e).splitlines()[0]}") from e
    if column not in schema.names:
        raise DataError(
            f"{path} has no column {column!r} (it has: {', '.join(schema.names)}); set data.text_column"
        )
    kind = schema.field(column).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"column {column!r} of {path} holds {kind}, not text; set data.text_column")


def _read_parquet_column(path: Path, column: str) -> Iterator[str]:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024, columns=[column]):
        yield from (text for text in batch.column(0).to_pylist() if text)


# --- the cache ----------------------------------------------------------------------------------------------


def _fingerprint(cfg: DataConfig, source: _Source) -> str:
    """A hash of every input to the tokens: the settings, and each file's path, size and modification time."""

    def stats(files: list[Path]) -> list:
        return [(str(p), (s := p.stat()).st_size, s.st_mtime_ns) for p in files]

    inputs = [_FORMAT, cfg.source, cfg.text_column, cfg.max_train_bytes, stats(source.train_files),
              stats(source.val_files)]
    if cfg.pretokenizer != "bytelevel":  # caches built before the switch existed keep their key
        inputs.append(cfg.pretokenizer)
    return hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]


def _is_complete(root: Path) -> bool:
    # Each part appears by an atomic rename, so existing means complete.
    return all((root / name).exists() for name in ("tokenizer", "train.npy", "val.npy"))


@contextlib.contextmanager
def _exclusive(root: Path) -> Iterator[None]:
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the process dies
        yield


def _build(root: Path, cfg: DataConfig, source: _Source, vocab_size: int) -> None:
    """Create the missing parts of the cache folder `root`; the caller holds its lock."""
    # Temporaries left by a builder that was killed: nobody else writes here while we hold the lock.
    for stale in root.glob(".tmp-*"):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()
    if not (root / "tokenizer").exists():
        limit = min(cfg.max_train_bytes or _TOKENIZER_TRAIN_BYTES, _TOKENIZER_TRAIN_BYTES)
        texts = list(_take_bytes(source.documents(source.train_files), limit))
        if not texts:
            raise DataError(f"the {cfg.source} training files hold no text: {_describe(source.train_files)}")
        _train_tokenizer(texts, vocab_size, root, cfg.pretokenizer)
    # The saved tokenizer, with specials taken literally: a document that contains the text "<|bos|>" is text.
    tokenizer = Tokenizer.from_file(str(root / "tokenizer" / "tokenizer.json"))
    tokenizer.encode_special_tokens = True
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    splits = {
        "train": (_take_bytes(source.documents(source.train_files), cfg.max_train_bytes), source.train_files),
        "val": (source.documents(source.val_files), source.val_files),
    }
    for split, (documents, files) in splits.items():
        if not (root / f"{split}.npy").exists():
            _log(f"tokenizing the {split} split of {root.name}")
            t0 = time.time()
            n = _write_shard(root / f"{split}.npy", documents, tokenizer, dtype)
            if n == 0:
                raise DataError(f"the {cfg.source} {split} split holds no text ({_describe(files)})")
            _log(f"{split} split: {n:,} tokens in {time.time() - t0:.1f}s")


def _describe(files: list[Path]) -> str:
    return f"{len(files)} files" + (f", e.g. {files[0]}" if files else "")


def _take_bytes(documents: Iterable[str], limit: int | None) -> Iterator[str]:
    """The documents up to `limit` UTF-8 bytes in all, the last one cut short (None: no limit)."""
    if limit is None:
        yield from documents
        return
    for doc in documents:
        data = doc.encode()
        if len(data) >= limit:
            yield data[:limit].decode(errors="ignore")  # a cut through a character drops its partial bytes
            return
        limit -= len(data)
        yield doc


def _pre_tokenizer(kind: str) -> pre_tokenizers.PreTokenizer:
    """The split into words, then every byte spelled by one character of ByteLevel's alphabet."""
    if kind == "bytelevel":
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if kind == "gpt4":
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(GPT4_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])  # fmt: skip
    raise DataError(f"unknown data.pretokenizer={kind!r}; choose one of: {', '.join(PRETOKENIZERS)}")


def _train_tokenizer(texts: list[str], vocab_size: int, root: Path, pretokenizer: str) -> None:
    n_bytes = sum(len(t.encode()) for t in texts)
    _log(f"training a {vocab_size}-token BPE for {root.name} on {n_bytes / 2**20:.1f} MiB of text")
    t0 = time.time()
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = _pre_tokenizer(pretokenizer)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer, length=len(texts))
    if bpe.get_vocab_size() < vocab_size:
        _log(f"the text supports only {bpe.get_vocab_size()} tokens; ids from there to {vocab_size} stay unused")
    tokenizer = _tokenizer_class()(
        tokenizer_object=bpe,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[1],
        pad_token=SPECIAL_TOKENS[2],
        additional_special_tokens=list(SPECIAL_TOKENS[3:]),
        clean_up_tokenization_spaces=False,  # decode must give back the exact text
    )
    tmp = tempfile.mkdtemp(dir=root, prefix=".tmp-tokenizer-")
    os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache from other users
    tokenizer.save_pretrained(tmp)
    os.replace(tmp, root / "tokenizer")
    _log(f"trained the tokenizer in {time.time() - t0:.1f}s")


def _write_shard(path: Path, documents: Iterable[str], tokenizer: Tokenizer, dtype: type) -> int:
    """Tokenize `documents` into the 1-D .npy `path`, each preceded by BOS; return the token count."""
    bos = np.array([tokenizer.token_to_id(SPECIAL_TOKENS[0])], dtype)
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": (0,)}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".tmp-{path.name}-")
    try:
        n = 0
        with os.fdopen(fd, "wb") as f:
            # numpy pads a .npy header so the length of a 1-D array can grow in place: write a placeholder, stream
            # the tokens (memory stays bounded whatever the corpus size), then rewrite it with the final length.
            np.lib.format.write_array_header_1_0(f, header)
            for chunk in _chunks(documents, _ENCODE_CHUNK_CHARS):
                pieces = []
                for encoding in tokenizer.encode_batch_fast(chunk, add_special_tokens=False):
                    pieces += (bos, np.asarray(encoding.ids, dtype))
                ids = np.concatenate(pieces)
                f.write(ids.tobytes())
                n += len(ids)
            f.seek(0)
            np.lib.format.write_array_header_1_0(f, {**header, "shape": (n,)})
        if n:
            os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
            os.replace(tmp, path)
        return n
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _chunks(documents: Iterable[str], max_chars: int) -> Iterator[list[str]]:
    chunk, size = [], 0
    for doc in documents:
        chunk.append(doc)
        size += len(doc)
        if size >= max_chars:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _token_bytes(tokenizer: Tokenizer, vocab_size: int) -> np.ndarray:
    """UTF-8 byte length of every id below `vocab_size`; 0 for special and unused ids."""
    # A ByteLevel token spells each of its bytes with one alphabet character, so its byte length is its length in
    # characters. (Decoding one id to text would not do: a token may hold part of a multi-byte character.)
    lengths = np.zeros(vocab_size, np.int32)
    special = {tokenizer.token_to_id(t) for t in SPECIAL_TOKENS}
    for token, i in tokenizer.get_vocab(with_added_tokens=True).items():
        if i not in special:
            lengths[i] = len(token)
    return lengths


def _log(message: str) -> None:
    print(f"[data] {message}", file=sys.stderr, flush=True)
