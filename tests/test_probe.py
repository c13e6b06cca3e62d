"""The codeword-retrieval probe: codewords, sequences decoded back to text, eval sets, loss and accuracy."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from weibull_jax import data, probe

SMALL_CORPUS = os.path.join(data.DEFAULT_CORPUS, "library", "a*.rst.txt")


def _bpe(texts, vocab_size):
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size,
                                                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return tokenizer


@pytest.fixture(scope="module")
def corpus_tokenizer(tmp_path_factory):
    files = data.corpus_files(SMALL_CORPUS)
    return data.load_tokenizer("", files, 1024, str(tmp_path_factory.mktemp("cache")))


def test_vocabulary_words_come_first_and_made_up_words_fill_up():
    words = ["ALPHA", "OMEGA", "SIGMA", "DELTA"]
    tokenizer = _bpe([" ".join(words * 50) + " the cat sat on the mat"] * 20, 300)
    task = probe.make_task(tokenizer, n_codewords=10, seed=1)
    found = [w for w in task.codewords if task.tokenizer.token_to_id("Ġ" + w) is not None]
    assert set(words) <= set(found) and len(set(task.codewords)) == 10
    assert task.added == 10 - len(found) > 0 and task.vocab_size == tokenizer.get_vocab_size() + task.added
    for word, token_id in zip(task.codewords, task.codeword_ids):
        assert task.tokenizer.encode(" " + word).ids == [token_id]
        assert word.isupper() and word.isalpha()


def test_training_sequences_decode_to_key_and_query_with_the_codeword_at_the_mask(corpus_tokenizer):
    task = probe.make_task(corpus_tokenizer, 512, seed=0)
    assert len(task.codewords) == 512 and len(set(task.codeword_ids.tolist())) == 512
    rng = np.random.default_rng(0)
    chunk = rng.integers(300, 1000, 256)
    for _ in range(50):
        example = probe.inject(task, chunk, rng, rate=1.0)
        tokens, mask = example["tokens"], example["probe_mask"]
        assert tokens.shape == (256,) and mask.sum() == 1
        position = int(np.flatnonzero(mask)[0])
        codeword = task.tokenizer.decode([int(tokens[position + 1])])
        assert codeword.startswith(" ") and codeword[1:] in task.codewords
        text = task.tokenizer.decode(tokens[: position + 2].tolist())
        key, query = next((k, q) for k, q in probe.TEMPLATES if k.split(" {}")[0] in text)
        assert key.format(codeword[1:]) in text and text.endswith(query.format(codeword[1:]))
        # the KEY ends before the gap of 5–30 corpus tokens: find the KEY's last token by decoding prefixes
        key_end = next(i for i in range(position) if task.tokenizer.decode(tokens[: i + 1].tolist()).endswith(
            key.format(codeword[1:])))
        query_tokens = len(task.query(probe.TEMPLATES.index((key, query)), list(task.codewords).index(codeword[1:])))
        assert 5 <= position + 2 - query_tokens - (key_end + 1) <= 30
        np.testing.assert_array_equal(tokens[:2], chunk[:2])  # a corpus prefix of at least two tokens
    plain = probe.inject(task, chunk, rng, rate=0.0)
    np.testing.assert_array_equal(plain["tokens"], chunk)
    assert not plain["probe_mask"].any()


@pytest.mark.parametrize("gap", [probe.TRAIN_GAP, probe.OOD_GAP])
def test_eval_sets_put_one_probe_on_filler_with_the_gap_in_range(corpus_tokenizer, gap):
    task = probe.make_task(corpus_tokenizer, 512, seed=0)
    s = probe.eval_set(task, 200, 256, gap, seed=3)
    assert s["tokens"].shape == (200, 256) and np.all(s["probe_mask"].sum(1) == 1)
    codewords = set(task.codeword_ids.tolist())
    gaps = []
    for tokens, mask in zip(s["tokens"], s["probe_mask"]):
        position = int(np.flatnonzero(mask)[0])
        assert int(tokens[position + 1]) in codewords
        assert sum(int(t) in codewords for t in tokens) == 2  # the KEY's and the QUERY's codeword
        first = int(np.flatnonzero(np.isin(tokens, task.codeword_ids))[0])
        template = next(i for i in range(len(probe.TEMPLATES))
                        if np.array_equal(tokens[first + 1:first + 1 + len(task.pieces[i][1])], task.pieces[i][1])
                        and np.array_equal(tokens[position + 1 - len(task.pieces[i][2]):position + 1], task.pieces[i][2]))
        key_end = first + len(task.pieces[template][1])
        gaps.append(position + 1 - len(task.pieces[template][2]) - key_end - 1)
        assert 2 <= first - len(task.pieces[template][0]) <= 10  # the filler prefix
    assert min(gaps) >= gap[0] and max(gaps) <= gap[1] and max(gaps) - min(gaps) > (gap[1] - gap[0]) // 2


def test_probe_loss_and_accuracy_against_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 8, 11)).astype(np.float32)
    tokens = rng.integers(0, 11, (3, 8))
    mask = np.zeros((3, 8), bool)
    mask[0, 2] = mask[1, 5] = mask[2, 6] = True
    tokens[2, 7] = np.argmax(logits[2, 6])  # one hit
    tokens[0, 3] = (np.argmax(logits[0, 2]) + 1) % 11  # a miss
    tokens[1, 6] = (np.argmax(logits[1, 5]) + 1) % 11  # a miss
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean([log_p[b, t, tokens[b, t + 1]] for b, t in zip(*np.nonzero(mask))])
    np.testing.assert_allclose(float(probe.probe_loss(jnp.asarray(logits), jnp.asarray(tokens), jnp.asarray(mask))),
                               expected, rtol=1e-5)
    fraction = probe.accuracy(lambda t: jnp.asarray(logits)[: t.shape[0]], jnp.asarray(tokens), jnp.asarray(mask),
                              chunk=3)
    assert abs(float(fraction) - 1 / 3) < 1e-6


def test_objective_and_its_gradient_against_float64():
    """L_LM + λ·L_probe from one weighted pass: the value, both parts, and the gradient
    [scored]/N·(p − onehot) + λ·[probe]/N_p·(p − onehot), against numpy in float64.

    Error bound (float32, u = 2⁻²⁴): a position's loss within u·(V + 2|z| + 8) of its value (the sums of V
    exponentials, the log and the differences), its gradient within w·(p·that + 4u), the means within their
    R + 2 rounded terms; the test allows twice that.
    """
    rng = np.random.default_rng(4)
    logits = rng.normal(0, 3, size=(3, 8, 11)).astype(np.float32)
    tokens = rng.integers(0, 11, (3, 8))
    mask = np.zeros((3, 8), bool)
    mask[0, 2] = mask[1, 5] = mask[2, 6] = mask[2, 3] = True
    weight = 2.5
    z = logits.astype(np.float64)
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    targets = np.roll(tokens, -1, axis=-1)
    losses = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
    scored = np.broadcast_to(np.arange(8) < 7, tokens.shape)
    w = scored / scored.sum() + weight * mask / mask.sum()
    lm, retrieval = losses[scored].mean(), losses[mask].mean()
    grad = (np.exp(log_p) - (np.arange(11) == targets[..., None])) * w[..., None]

    def total(x):
        return probe.objective(x, {"tokens": jnp.asarray(tokens), "probe_mask": jnp.asarray(mask)}, weight)

    (value, parts), got = jax.value_and_grad(total, has_aux=True)(jnp.asarray(logits))
    u = 2.0 ** -24
    position = u * (11 + 2 * np.abs(z).max() + 8)

    def mean_bound(mean):
        return 2 * (position + (tokens.size + 2) * u * abs(mean))

    assert abs(float(parts["lm_loss"]) - lm) <= mean_bound(lm)
    assert abs(float(parts["probe_loss"]) - retrieval) <= mean_bound(retrieval)
    assert abs(float(value) - (lm + weight * retrieval)) <= mean_bound(lm) + weight * mean_bound(retrieval)
    assert np.all(np.abs(np.asarray(got, np.float64) - grad) <= 2 * w[..., None] * (np.exp(log_p) * position + 4 * u))


def test_weight_schedule_doubles_at_step_4000():
    weight = probe.weight_schedule(((0, 2.0), (4000, 4.0)))
    assert [float(weight(s)) for s in (0, 1, 3999, 4000, 9999)] == [2.0, 2.0, 2.0, 4.0, 4.0]
