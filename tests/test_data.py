"""Batch sampling of the grain pipeline: contiguous epochs, the public code's random offsets, unigram draws."""

import numpy as np
import pytest

from weibull_jax import data

N, SEQ, BATCH = 10_000, 16, 8
TOKENS = np.arange(N, dtype=np.uint32)  # a window's first token is its offset


def _batches(sampling, count, seed=3, processes=1, index=0):
    it = iter(data.training_batches(TOKENS, SEQ, BATCH, seed, processes=processes, process_index=index,
                                    sampling=sampling))
    return np.stack([next(it) for _ in range(count)])


def test_epochs_visit_every_chunk_once_per_epoch():
    chunks = N // SEQ  # 625
    draws = _batches("epochs", 2 * chunks // BATCH).reshape(-1, SEQ)  # two epochs' worth, 1248 chunks
    assert np.all(draws % SEQ == np.arange(SEQ))  # chunks start at multiples of seq_len
    first, second = draws[:chunks, 0] // SEQ, draws[chunks:, 0] // SEQ
    assert sorted(first) == list(range(chunks))  # a permutation of all chunks
    assert len(set(second)) == len(second)  # the second epoch (all but its last 2 chunks) repeats none
    assert not np.array_equal(first[: len(second)], second)  # in another order


def test_random_offsets_are_uniform_windows_with_replacement():
    windows = _batches("random_offsets", 500).reshape(-1, SEQ)  # 4000 windows
    assert np.all(np.diff(windows, axis=1) == 1)  # contiguous tokens
    starts = windows[:, 0].astype(np.float64)
    last = N - SEQ
    assert starts.min() >= 0 and starts.max() <= last
    # uniform on {0 … last}: mean last/2, sd last/√12 per draw; 5 standard errors
    assert abs(starts.mean() - last / 2) < 5 * last / np.sqrt(12 * starts.size)
    counts, _ = np.histogram(starts, bins=10, range=(0, last + 1))
    expected = starts.size / 10
    assert np.sum((counts - expected) ** 2 / expected) < 27.9  # χ²(9) at p = 0.001
    assert np.mean(starts % SEQ == 0) < 0.2  # not aligned to chunks (1/16 expected)
    assert len(np.unique(starts)) < starts.size  # drawn with replacement: 4000 draws from 9985 repeat


def test_unigram_draws_follow_the_token_frequencies_and_never_repeat():
    frequencies = np.asarray([500, 300, 150, 50])
    tokens = np.repeat(np.arange(4, dtype=np.uint16), frequencies)  # 62 chunks of 16
    it = iter(data.training_batches(tokens, SEQ, BATCH, 3, sampling="unigram"))
    draws = np.stack([next(it) for _ in range(200)])  # 25,600 tokens, 25 epochs' worth of chunks
    counts = np.bincount(draws.ravel(), minlength=4)
    expected = draws.size * frequencies / frequencies.sum()
    assert np.sum((counts - expected) ** 2 / expected) < 16.27  # χ²(3) at p = 0.001
    chunks = _batches("unigram", 100).reshape(-1, SEQ)  # 800 chunks of TOKENS' 10,000 equally frequent tokens
    assert len(np.unique(chunks, axis=0)) == len(chunks)  # fresh draws (a repeat has probability ~1e-58)
    assert not np.any(np.all(np.diff(chunks.astype(np.int64), axis=1) == 1, axis=1))  # no chunk is a window


@pytest.mark.parametrize("sampling", ["random_offsets", "unigram"])
def test_draws_are_reproducible_resumable_and_split_over_processes(sampling):
    np.testing.assert_array_equal(_batches(sampling, 5), _batches(sampling, 5))
    assert not np.array_equal(_batches(sampling, 5), _batches(sampling, 5, seed=4))
    it = iter(data.training_batches(TOKENS, SEQ, BATCH, 3, sampling=sampling))
    for _ in range(3):
        next(it)
    state = it.get_state()
    expected = next(it)
    again = iter(data.training_batches(TOKENS, SEQ, BATCH, 3, sampling=sampling))
    again.set_state(state)
    np.testing.assert_array_equal(next(again), expected)
    halves = [_batches(sampling, 4, processes=2, index=p) for p in (0, 1)]
    np.testing.assert_array_equal(np.concatenate(halves, axis=1), _batches(sampling, 4))


def test_unknown_sampling_is_refused():
    with pytest.raises(ValueError, match="sampling must be one of"):
        data.training_batches(TOKENS, SEQ, BATCH, 0, sampling="shuffled")


def test_named_corpora_resolve_to_their_folders_or_name_the_package(tmp_path, monkeypatch):
    python_docs, kernel_docs = tmp_path / "python", tmp_path / "kernel"
    for folder, names in ((python_docs, ("a.rst.txt", "b/c.rst.txt")), (kernel_docs, ("d.rst.txt",))):
        for name in names:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_text("text")
    monkeypatch.setitem(data.NAMED_CORPORA, "docs-large", ((str(python_docs), "python3.11-doc"),
                                                            (str(kernel_docs), "linux-doc-6.1")))
    monkeypatch.setitem(data.NAMED_CORPORA, "kernel-docs", ((str(tmp_path / "absent"), "linux-doc-6.1"),))
    assert data.corpus_files("docs-large") == sorted(
        [str(python_docs / "a.rst.txt"), str(python_docs / "b" / "c.rst.txt"), str(kernel_docs / "d.rst.txt")])
    assert data.corpus_files(f"docs-large,{tmp_path}/python/a.rst.txt") == data.corpus_files("docs-large")
    with pytest.raises(ValueError, match="corpus 'kernel-docs' is missing: install it with `apt-get install "
                                         "linux-doc-6.1`"):
        data.corpus_files("kernel-docs")
    assert data.corpus_files("default") == data.corpus_files(data.DEFAULT_CORPUS)


def test_a_bpe_trained_on_another_corpus_and_the_shuffled_control(tmp_path):
    """``tokenizer_corpus``: the corpus' text encoded by the BPE of another corpus (HF tokenizers' own encoding
    of the documents is the reference); ``shuffle_tokens``: the same tokens, each as often, in another order,
    the same order in every call."""
    from ml_collections import ConfigDict

    for name, text in (("a", "the cat sat on the mat\n" * 50), ("b", "a dog ran in the fog, the dog ran\n" * 50)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "doc.txt").write_text(text)

    def corpus(**changes):
        fields = dict(corpus=str(tmp_path / "a"), tokenizer="", tokenizer_corpus="", vocab_size=300,
                      shuffle_tokens=False, cache_dir=str(tmp_path / "cache"))
        return data.prepare(ConfigDict({**fields, **changes}))

    own, borrowed = corpus(), corpus(tokenizer_corpus=str(tmp_path / "b"))
    b_bpe = corpus(corpus=str(tmp_path / "b")).tokenizer
    assert borrowed.tokenizer.to_str() == b_bpe.to_str() != own.tokenizer.to_str()
    expected = b_bpe.encode((tmp_path / "a" / "doc.txt").read_text()).ids + [b_bpe.token_to_id("<|endoftext|>")]
    assert list(borrowed.tokens) == expected
    shuffled = corpus(shuffle_tokens=True).tokens
    assert sorted(shuffled) == sorted(own.tokens) and list(shuffled) != list(own.tokens)
    assert list(corpus(shuffle_tokens=True).tokens) == list(shuffled)
