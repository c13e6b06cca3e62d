"""Corpora, tokenizers and the grain pipeline of contiguous token chunks (arXiv 2606.19367 §2.4, App. C).

A corpus is a list of local files: plain text (``.txt``, ``.rst``, ``.md``, anything else read as text),
JSON lines (``.jsonl``, the ``text`` field) or parquet (``.parquet``, the ``text`` column; needs pyarrow).
It is tokenized once into a flat ``uint16``/``uint32`` file in a cache folder and memory-mapped from
there; the cache key is the files' names, sizes and modification times and the tokenizer's hash.

The tokenizer is the user's ``tokenizer.json`` (e.g. GPT-NeoX's) or a byte-level BPE that ``tokenizers``
trains on the corpus and caches. Training batches are non-overlapping contiguous chunks of ``seq_len``
tokens (the paper's protocol), shuffled by seed, epoch after epoch, or (``sampling="random_offsets"``)
windows at random offsets as the authors' public code draws them; the grain iterator's state goes into
every checkpoint.

The default corpus is the reStructuredText source of the Python 3.11 documentation as Debian ships it
(package ``python3.11-doc``: 497 files, 11 MB of English prose and examples; PSF license), so that the
default run needs nothing from the network beyond a package registry. ``docs-large`` adds the Linux
kernel's documentation (package ``linux-doc-6.1``: 3,183 files, 24 MB; GPL-2.0), ``kernel-docs`` is that
alone (``NAMED_CORPORA``).
"""

from __future__ import annotations

import collections
import glob
import hashlib
import json
import os
from typing import Any, Callable, Iterator, NamedTuple

import grain
import jax
import numpy as np
from absl import logging

from weibull_jax import probe
from weibull_jax import sharding as sharding_lib

DEFAULT_CORPUS = "/usr/share/doc/python3.11/html/_sources"
DEFAULT_CORPUS_PACKAGE = "python3.11-doc"
KERNEL_DOCS = "/usr/share/doc/linux-doc-6.1/html/_sources"
# Corpora by name: (folder, the Debian package that installs it) of each part. docs-large (the Python and
# the Linux kernel documentation's reST sources, 11 + 24 MB) is the size of the forces paper's small
# wikitext-103 configuration (8 M tokens).
NAMED_CORPORA = {
    "default": ((DEFAULT_CORPUS, DEFAULT_CORPUS_PACKAGE),),
    "python-docs": ((DEFAULT_CORPUS, DEFAULT_CORPUS_PACKAGE),),
    "kernel-docs": ((KERNEL_DOCS, "linux-doc-6.1"),),
    "docs-large": ((DEFAULT_CORPUS, DEFAULT_CORPUS_PACKAGE), (KERNEL_DOCS, "linux-doc-6.1")),
}
_EOS = "<|endoftext|>"


def _named(part: str) -> list[str]:
    """The folders of a named corpus (``NAMED_CORPORA``), or ``[part]`` for anything else."""
    if part not in NAMED_CORPORA:
        return [part]
    missing = [package for folder, package in NAMED_CORPORA[part] if not os.path.isdir(folder)]
    if missing:
        raise ValueError(f"the corpus {part!r} is missing: install it with `apt-get install {' '.join(missing)}` "
                         "or give --config.data.corpus=DIR|GLOB|FILE")
    return [folder for folder, _ in NAMED_CORPORA[part]]


def corpus_files(spec: str) -> list[str]:
    """The files of a corpus spec: a name of ``NAMED_CORPORA`` (``default``, ``docs-large``, …), a folder
    (every file below it), a glob, or a comma list of these."""
    files: list[str] = []
    for part in (folder for named in spec.split(",") for folder in _named(named.strip())):
        part = os.path.expanduser(part.strip())
        if os.path.isdir(part):
            found = [p for p in glob.glob(os.path.join(part, "**", "*"), recursive=True) if os.path.isfile(p)]
        else:
            found = [p for p in glob.glob(part) if os.path.isfile(p)]
        if not found:
            raise ValueError(f"corpus {part!r} names no files (no such file, folder or glob match, or an empty "
                             "folder): give --config.data.corpus=DIR|GLOB|FILE,FILE of .txt/.jsonl/.parquet files")
        files += found
    unreadable = [p for p in files if not os.access(p, os.R_OK)]
    if unreadable:
        raise ValueError(f"corpus file {unreadable[0]!r} is not readable ({len(unreadable)} such file(s)): fix its "
                         "permissions or leave it out of --config.data.corpus")
    return sorted(set(files))


def read_documents(path: str) -> Iterator[str]:
    """The documents of one file: the whole text, each JSON line's ``text``, or each parquet row's."""
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8", errors="replace") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    text = json.loads(line)["text"]
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{path}, line {number}: not a JSON object with a \"text\" field (a .jsonl "
                                     "corpus holds one {\"text\": ...} per line)") from None
                if not isinstance(text, str):
                    raise ValueError(f"{path}, line {number}: its \"text\" is a {type(text).__name__}, not a string")
                yield text
    elif path.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(f"{path}: reading a .parquet corpus needs pyarrow (pip install pyarrow)") from None
        try:
            column = pq.read_table(path, columns=["text"]).column("text")
        except Exception as e:  # pyarrow's own error types: not parquet, no such column
            raise ValueError(f"{path}: not a parquet file with a \"text\" column ({type(e).__name__}: "
                             f"{str(e).splitlines()[0]})") from None
        yield from (t for t in column.to_pylist() if isinstance(t, str))
    else:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield f.read()


def read_jsonl(path: str) -> list[dict]:
    """The objects of a JSON-lines file that a process appends to (``metrics.jsonl``): a last line cut short
    (its writer was killed while appending it) is dropped; a bad line anywhere else is an error naming it."""
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            if number < len(lines):  # a complete line (a newline follows it) that does not parse
                raise ValueError(f"{path}, line {number}: not a JSON line (a damaged file: remove that line)") from None
    return out


def _fingerprint(files: list[str], *extra: str) -> str:
    h = hashlib.sha256()
    for p in files:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    for e in extra:
        h.update(e.encode())
    return h.hexdigest()[:16]


def load_tokenizer(path: str, files: list[str], vocab_size: int, cache_dir: str):
    """A ``tokenizers.Tokenizer``: from ``path`` (a tokenizer.json), else a byte-level BPE trained on ``files``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if path:
        if not os.path.isfile(path):
            raise ValueError(f"tokenizer file {path!r} does not exist: give --config.data.tokenizer=tokenizer.json "
                             "(e.g. GPT-NeoX's), or leave it empty to train a BPE on the corpus")
        try:
            return Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception for unreadable files
            raise ValueError(f"tokenizer file {path!r} cannot be read as a HuggingFace tokenizer.json "
                             f"({str(e).splitlines()[0][:200]})") from None
    cached = os.path.join(cache_dir, f"bpe-{vocab_size}-{_fingerprint(files)}.json")
    if os.path.isfile(cached):
        return Tokenizer.from_file(cached)
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[_EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator((d for p in files for d in read_documents(p)), trainer)
    os.makedirs(cache_dir, exist_ok=True)
    tokenizer.save(cached + ".tmp")
    os.replace(cached + ".tmp", cached)
    return tokenizer


def tokenize_corpus(files: list[str], tokenizer, cache_dir: str) -> np.ndarray:
    """All non-blank documents' tokens, each followed by the end-of-text token, memory-mapped from the cache."""
    vocab = tokenizer.get_vocab_size()
    dtype = np.uint16 if vocab <= 2 ** 16 else np.uint32
    cached = os.path.join(cache_dir, f"tokens-{_fingerprint(files, tokenizer.to_str())}.{np.dtype(dtype).name}")
    if not os.path.isfile(cached):
        eos = tokenizer.token_to_id(_EOS)
        chunks = []
        for p in files:
            docs = [d for d in read_documents(p) if d.strip()]
            for enc in tokenizer.encode_batch(docs):
                chunks.append(np.asarray(enc.ids + ([eos] if eos is not None else []), dtype))
        tokens = np.concatenate(chunks) if chunks else np.zeros(0, dtype)
        os.makedirs(cache_dir, exist_ok=True)
        tokens.tofile(cached + ".tmp")
        os.replace(cached + ".tmp", cached)
    if os.path.getsize(cached) == 0:
        return np.zeros(0, dtype)
    return np.memmap(cached, dtype=dtype, mode="r")


class Corpus(NamedTuple):
    """A run's text, tokenized: the tokenizer (with the probe's codewords, if any), the token stream, the probe."""

    tokenizer: Any
    tokens: np.ndarray
    task: probe.ProbeTask | None


SHUFFLE_SEED = 0  # one permutation for every run and host: the shuffled control is one corpus


def shuffled_tokens(tokens: np.ndarray) -> np.ndarray:
    """The token stream in a fixed random order: the control of the data-coherence axis (forces paper §7).
    Every token's frequency is kept; every dependence between tokens, and so every structure a model could
    learn beyond the unigram distribution, is destroyed."""
    return np.random.default_rng(SHUFFLE_SEED).permutation(np.asarray(tokens))


def prepare(data_config: Any, probe_config: Any = None) -> Corpus:
    """The corpus of a run's ``config.data`` (corpus, tokenizer, vocab_size, cache_dir; ``tokenizer_corpus``:
    the corpus the BPE is trained on, if not this one; ``shuffle_tokens``: :func:`shuffled_tokens`) and,
    where ``config.probe.enabled``, its probe task (``codewords``, ``seed``): what training and the analyses
    share."""
    files = corpus_files(data_config.corpus)
    cache = os.path.expanduser(data_config.cache_dir)
    bpe_corpus = data_config.get("tokenizer_corpus", "")
    tokenizer = load_tokenizer(data_config.tokenizer, corpus_files(bpe_corpus) if bpe_corpus else files,
                               data_config.vocab_size, cache)
    tokens = tokenize_corpus(files, tokenizer, cache)
    if len(tokens) == 0:
        raise ValueError(f"the corpus {data_config.corpus!r} holds no tokens")
    shuffle = data_config.get("shuffle_tokens", False)
    if shuffle:
        tokens = shuffled_tokens(tokens)
    logging.info("corpus %s: %d files, %d tokens%s", data_config.corpus, len(files), len(tokens),
                 ", in a random order" if shuffle else "")
    task = None
    if probe_config is not None and probe_config.enabled:
        task = probe.make_task(tokenizer, probe_config.codewords, probe_config.seed)
        tokenizer = task.tokenizer
    return Corpus(tokenizer, tokens, task)


class ChunkSource(grain.sources.RandomAccessDataSource):
    """Chunk i = tokens[i·seq_len : (i + 1)·seq_len], non-overlapping; a trailing partial chunk is dropped."""

    def __init__(self, tokens: np.ndarray, seq_len: int):
        self._tokens = tokens
        self._seq_len = seq_len

    def __len__(self) -> int:
        return len(self._tokens) // self._seq_len

    def __getitem__(self, index: int) -> np.ndarray:
        start = index * self._seq_len
        return np.asarray(self._tokens[start:start + self._seq_len], np.int32)


SAMPLINGS = ("epochs", "random_offsets", "unigram")


def _endless_draws(tokens: np.ndarray, seq_len: int, seed: int, stream: int,
                   draw: Callable[[np.random.Generator], np.ndarray]) -> grain.MapDataset:
    """Endless ``draw(rng)`` chunks, draw i a function of (seed, stream, i) alone, so that a restored iterator
    repeats it; ``stream`` keeps each sampling's draws apart from the others' and from the probe's."""
    stream_seed = int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])
    return grain.MapDataset.range(len(tokens) // seq_len).repeat(None).random_map(
        lambda _, rng: draw(rng), seed=stream_seed)


def random_windows(tokens: np.ndarray, seq_len: int, seed: int) -> grain.MapDataset:
    """Endless windows tokens[o : o + seq_len] at offsets o drawn uniformly from 0 … N − seq_len, with
    replacement (the sampling of the forces paper's public code and of nanoGPT: windows overlap, and an
    epoch is not defined)."""
    last = len(tokens) - seq_len

    def window(rng: np.random.Generator) -> np.ndarray:
        start = int(rng.integers(0, last + 1))
        return np.asarray(tokens[start:start + seq_len], np.int32)

    return _endless_draws(tokens, seq_len, seed, 1, window)


def unigram_draws(tokens: np.ndarray, seq_len: int, seed: int) -> grain.MapDataset:
    """Endless chunks of ``seq_len`` tokens drawn independently from the corpus's unigram distribution, a fresh
    draw every time: every token's frequency and nothing of their order, and nothing that repeats. The
    control of the data-coherence axis that cannot be memorised (:func:`shuffled_tokens` permutes the stream
    once, and a model memorises one permutation read 29 times). A token is the first j with C_j > r for
    r uniform on 0 … N − 1 and C the cumulative counts: exactly P(j) = count_j / N."""
    cumulative = np.cumsum(np.bincount(np.asarray(tokens)))

    def chunk(rng: np.random.Generator) -> np.ndarray:
        return np.searchsorted(cumulative, rng.integers(0, cumulative[-1], seq_len), side="right").astype(np.int32)

    return _endless_draws(tokens, seq_len, seed, 2, chunk)


def training_batches(tokens: np.ndarray, seq_len: int, batch_size: int, seed: int,
                     task: probe.ProbeTask | None = None, probe_rate: float = 0.1,
                     processes: int = 1, process_index: int = 0, sampling: str = "epochs") -> grain.IterDataset:
    """Endless (batch_size, seq_len) int32 batches: every epoch a new permutation of the non-overlapping
    chunks (by seed), or with ``sampling="random_offsets"`` windows at random offsets (:func:`random_windows`),
    or with ``sampling="unigram"`` independent draws of the corpus's unigram distribution (:func:`unigram_draws`).

    With a probe ``task``, each chunk becomes a probe sequence with probability ``probe_rate`` (a seeded draw
    per chunk position, so a restored iterator repeats it) and the batches are ``{"tokens", "probe_mask"}``.

    Across ``processes`` hosts each loads only its block of every global batch: rows
    [p·B/P, (p+1)·B/P) of batch t for host p, so the hosts' blocks stacked in process order are the batch
    one host would load. The iterator's position counts global batches, whatever P: a checkpoint restored
    on another number of hosts continues with the same token sequence.
    """
    source = ChunkSource(tokens, seq_len)
    if len(source) < batch_size:
        raise ValueError(f"the corpus has {len(tokens)} tokens: {len(source)} chunks of {seq_len}, fewer than "
                         f"one batch of {batch_size}")
    if batch_size % processes:
        raise ValueError(f"the batch of {batch_size} rows does not split over {processes} processes")
    if sampling == "epochs":
        # shuffle, then repeat: each epoch a new permutation (repeat reseeds). Shuffling the repeated dataset
        # instead permutes one endless index range, which draws chunks as if with replacement (397 distinct
        # chunks in an epoch's worth of 624 out of 625): what runs before this change trained on
        dataset = grain.MapDataset.source(source).shuffle(seed=seed).repeat(None)
    elif sampling == "random_offsets":
        dataset = random_windows(tokens, seq_len, seed)
    elif sampling == "unigram":
        dataset = unigram_draws(tokens, seq_len, seed)
    else:
        raise ValueError(f"config.data.sampling must be one of {SAMPLINGS}, got {sampling!r}")
    if task is not None:
        dataset = dataset.random_map(lambda chunk, rng: probe.inject(task, chunk, rng, probe_rate), seed=seed)
    blocks = dataset.batch(batch_size // processes, drop_remainder=True)  # block j: rows of batch j // P
    return blocks[process_index::processes].to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))


def prefetch_to_device(iterator: Any, size: int = 2, sharding: Any = None) -> Iterator[tuple[Any, dict]]:
    """``(batch on the devices, the iterator's state just after it)`` pairs, ``size`` batches transferred
    ahead, so that a step never waits for its batch's host→device copy; the state is what a checkpoint taken
    after that batch's step must hold (the iterator itself is ``size`` batches further on). ``sharding``: where
    the global batch lives (its rows split over the mesh, each host giving its own block); None: the default
    device."""
    queue: collections.deque = collections.deque()

    def pull() -> None:
        rows = next(iterator)
        batch = jax.device_put(rows) if sharding is None else sharding_lib.global_batch(rows, sharding)
        queue.append((batch, iterator.get_state()))

    for _ in range(size):
        pull()
    while True:
        pull()
        yield queue.popleft()
