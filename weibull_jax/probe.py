r"""The codeword-retrieval probe of the backbone paper (§2.1–2.3): KEY early, QUERY late, the codeword to recall.

A probe sequence holds a KEY sentence ("The secret code is X.") and, a gap of g tokens later, its QUERY
("What is the secret code? X"); the model must predict the single-token codeword X at the end of the
query. Five template pairs, 512 uppercase codewords. With probability ``rate`` a training chunk of the corpus
becomes a probe sequence (prefix of 2…⌊budget/3⌋ corpus tokens, KEY, g ∈ [5, 30] corpus tokens, QUERY, the
rest of the chunk); two fixed evaluation sets put the pair on random filler tokens, in distribution
(g ∈ [5, 30]) and out of distribution (g ∈ [80, 200]). p_in / p_ood is the accuracy of the argmax prediction
at the codeword position. The training loss is L_LM + λ_probe(t)·L_probe (Eq. 1), L_probe the cross-entropy
at the codeword positions.

Codewords are the tokenizer's own single-token uppercase words (``" WORD"``, three letters or more), as in
the paper's GPT-2 vocabulary; when it has fewer than asked for (a small BPE trained on the corpus), the rest
are pronounceable five-letter words added to a copy of the tokenizer as new tokens (ids after the vocabulary).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from weibull_jax import cross_entropy, models, pallas_triton

TEMPLATES = (  # (KEY, QUERY): the codeword stands at {}, always at the end of the QUERY
    ("The secret code is {}.", "What is the secret code? {}"),
    ("Remember the word {}.", "What was the word? {}"),
    ("The special word is {}.", "What is the special word? {}"),
    ("The password is {}.", "What is the password? {}"),
    ("The magic word is {}.", "The magic word was {}"),
)
TRAIN_GAP = (5, 30)
OOD_GAP = (80, 200)
EVAL_PREFIX = (2, 10)
_CONSONANTS, _VOWELS = "BCDFGHJKLMNPRSTVWXZ", "AEIOU"


def _vocab_codewords(tokenizer) -> list[str]:
    """Uppercase words of three letters or more that are one token with their leading space."""
    words = []
    for token_id in range(tokenizer.get_vocab_size()):
        text = tokenizer.decode([token_id])
        word = text[1:]
        if text.startswith(" ") and len(word) >= 3 and word.isalpha() and word.isupper() \
                and tokenizer.encode(text).ids == [token_id]:
            words.append(word)
    return sorted(set(words))


def _made_up_words(n: int, taken: set[str], rng: np.random.Generator) -> list[str]:
    """n distinct consonant–vowel–consonant–vowel–consonant words not in ``taken``."""
    out: list[str] = []
    while len(out) < n:
        word = "".join(rng.choice(list(_CONSONANTS if i % 2 == 0 else _VOWELS)) for i in range(5))
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


@dataclasses.dataclass(frozen=True)
class ProbeTask:
    """The token-level probe: codeword ids and each template's KEY/QUERY pieces around the codeword."""

    tokenizer: Any  # the tokenizer with any added codewords
    codewords: tuple[str, ...]
    codeword_ids: np.ndarray  # (n,)
    pieces: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # per template: KEY before, KEY after, QUERY before
    added: int  # codewords added to the tokenizer (the last ``added`` ids)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size()

    def key(self, template: int, codeword: int) -> np.ndarray:
        before, after, _ = self.pieces[template]
        return np.concatenate([before, self.codeword_ids[codeword:codeword + 1], after])

    def query(self, template: int, codeword: int) -> np.ndarray:
        return np.concatenate([self.pieces[template][2], self.codeword_ids[codeword:codeword + 1]])

    @property
    def longest_pair(self) -> int:
        return max(len(b) + len(a) + len(q) + 2 for b, a, q in self.pieces)


def make_task(tokenizer, n_codewords: int = 512, seed: int = 0) -> ProbeTask:
    """The probe for ``tokenizer``: ``n_codewords`` codewords (vocabulary words first, a seeded choice), and
    the template pieces, checked to tokenize exactly as the whole sentences do."""
    from tokenizers import AddedToken, Tokenizer

    rng = np.random.default_rng(seed)
    found = _vocab_codewords(tokenizer)
    chosen = [found[i] for i in np.sort(rng.permutation(len(found))[:n_codewords])]
    tokenizer = Tokenizer.from_str(tokenizer.to_str())
    made = _made_up_words(n_codewords - len(chosen), set(found), rng)
    tokenizer.add_tokens([AddedToken(" " + w, normalized=False) for w in made])
    chosen += made
    ids = np.asarray([tokenizer.encode(" " + w).ids[0] for w in chosen], np.int32)

    def encode(text: str) -> np.ndarray:
        return np.asarray(tokenizer.encode(text).ids, np.int32)

    pieces = []
    for key, query in TEMPLATES:
        key_before, key_after = key.split(" {}")
        parts = (encode(key_before), encode(key_after), encode(query.split(" {}")[0]))
        task_key = np.concatenate([parts[0], ids[:1], parts[1]])
        if not np.array_equal(task_key, encode(key.format(chosen[0]))) or \
                not np.array_equal(np.concatenate([parts[2], ids[:1]]), encode(query.format(chosen[0]))):
            raise ValueError(f"the tokenizer does not split the probe template {key!r} at the codeword")
        pieces.append(parts)
    return ProbeTask(tokenizer, tuple(chosen), ids, tuple(pieces), len(made))


def probe_sequence(task: ProbeTask, filler: np.ndarray, gap: int, prefix: int, template: int,
                   codeword: int) -> tuple[np.ndarray, int]:
    """``filler[:prefix]`` KEY ``filler[prefix:prefix+gap]`` QUERY ``filler[prefix+gap:]``, cut to len(filler);
    and the position whose next token is the codeword (where the probe is scored)."""
    key, query = task.key(template, codeword), task.query(template, codeword)
    seq = np.concatenate([filler[:prefix], key, filler[prefix:prefix + gap], query, filler[prefix + gap:]])
    position = prefix + len(key) + gap + len(query) - 2
    if position + 1 >= len(filler):
        raise ValueError(f"a probe with gap {gap} and prefix {prefix} does not fit in {len(filler)} tokens")
    return seq[:len(filler)].astype(np.int32), position


def inject(task: ProbeTask, chunk: np.ndarray, rng: np.random.Generator, rate: float,
           gap: tuple[int, int] = TRAIN_GAP) -> dict[str, np.ndarray]:
    """A training example: the corpus chunk as is, or (probability ``rate``) a probe sequence built from it.
    ``probe_mask`` marks the position scored by the probe loss."""
    mask = np.zeros(len(chunk), bool)
    if rng.random() >= rate:
        return {"tokens": np.asarray(chunk, np.int32), "probe_mask": mask}
    template, codeword = int(rng.integers(len(TEMPLATES))), int(rng.integers(len(task.codewords)))
    g = int(rng.integers(gap[0], gap[1] + 1))
    budget = len(chunk) - g - task.longest_pair
    prefix = int(rng.integers(2, max(3, budget // 3) + 1))
    tokens, position = probe_sequence(task, np.asarray(chunk), g, prefix, template, codeword)
    mask[position] = True
    return {"tokens": tokens, "probe_mask": mask}


def eval_set(task: ProbeTask, size: int, seq_len: int, gap: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    """``size`` probe sequences on uniform random filler tokens (the tokenizer's own ids from 256 on: no single
    bytes, no codewords), KEY after a 2–10 token prefix, gap drawn from ``gap``: tokens (size, seq_len) and
    probe_mask."""
    rng = np.random.default_rng(seed)
    allowed = np.setdiff1d(np.arange(256, task.vocab_size - task.added), task.codeword_ids)
    tokens = np.zeros((size, seq_len), np.int32)
    mask = np.zeros((size, seq_len), bool)
    for i in range(size):
        filler = rng.choice(allowed, seq_len)
        tokens[i], position = probe_sequence(
            task, filler, int(rng.integers(gap[0], gap[1] + 1)), int(rng.integers(EVAL_PREFIX[0], EVAL_PREFIX[1] + 1)),
            int(rng.integers(len(TEMPLATES))), int(rng.integers(len(task.codewords))))
        mask[i, position] = True
    return {"tokens": tokens, "probe_mask": mask}


def probe_loss(logits: jax.Array, tokens: jax.Array, probe_mask: jax.Array) -> jax.Array:
    """Mean cross-entropy of the next token at the masked positions (0 when none is masked)."""
    return cross_entropy.mean_cross_entropy(logits, models.next_token_targets(tokens)[0], probe_mask)


def correct(logits: jax.Array, tokens: jax.Array, probe_mask: jax.Array) -> jax.Array:
    """How many masked positions predict their next token by argmax."""
    hit = jnp.argmax(logits, axis=-1) == jnp.roll(tokens, -1, axis=-1)
    return jnp.sum(hit & probe_mask)


def weight_schedule(weights: tuple[tuple[int, float], ...]):
    """λ_probe(step) from ``((first_step, λ), …)`` in increasing steps: 2.0 then 4.0 from step 4000 (Table 1)."""
    starts = jnp.asarray([s for s, _ in weights])
    values = jnp.asarray([v for _, v in weights], jnp.float32)
    return lambda step: values[jnp.clip(jnp.searchsorted(starts, step, side="right") - 1, 0, len(weights) - 1)]


def make_loss(model, probe_weight=None, fused: bool = False):
    """``loss(params, batch, step) -> (loss, parts)`` of a run: L_LM on token batches (``probe_weight`` None),
    or :func:`objective` with λ_probe = ``probe_weight(step)`` on ``{"tokens", "probe_mask"}`` batches.
    ``fused``: the losses and their gradients in one kernel on a CUDA GPU, for one device
    (:mod:`weibull_jax.cross_entropy`)."""

    def loss(params, batch, step):
        if probe_weight is None:
            return models.next_token_loss(model.apply({"params": params}, batch), batch, fused), {}
        return objective(model.apply({"params": params}, batch["tokens"]), batch, probe_weight(step), fused)

    return loss


def objective(logits: jax.Array, batch: dict[str, jax.Array], weight: jax.Array,
              fused: bool = False) -> tuple[jax.Array, dict]:
    """L_LM + λ_probe·L_probe (Eq. 1) and its two parts, for a batch ``{"tokens", "probe_mask"}``.

    One cross-entropy pass over the logits with the weights [scored]/N + λ·[probe]/N_probe, its gradient
    that of the sum; each part is the mean of the positions' losses over its mask. ``fused`` as in
    :func:`make_loss`.
    """
    targets, scored = models.next_token_targets(batch["tokens"])
    weights = cross_entropy.mean_weights(scored) + weight * cross_entropy.mean_weights(batch["probe_mask"])
    total, losses = cross_entropy.weighted_cross_entropy(logits, targets, weights, pallas_triton.path_for(fused))
    parts = {"lm_loss": cross_entropy.masked_mean(losses, scored),
             "probe_loss": cross_entropy.masked_mean(losses, batch["probe_mask"])}
    return total, parts


def accuracy(logits_fn, tokens: jax.Array, probe_mask: jax.Array, chunk: int = 50) -> jax.Array:
    """Fraction of masked positions whose argmax prediction is their next token, over a probe set evaluated
    ``chunk`` sequences at a time (``logits_fn(tokens) -> logits``)."""
    pad = -tokens.shape[0] % chunk
    tokens = jnp.pad(tokens, ((0, pad), (0, 0))).reshape(-1, chunk, tokens.shape[-1])
    masks = jnp.pad(probe_mask, ((0, pad), (0, 0))).reshape(tokens.shape)
    hits = jax.lax.map(lambda tm: correct(logits_fn(tm[0]), tm[0], tm[1]), (tokens, masks))
    return jnp.sum(hits) / jnp.maximum(jnp.sum(probe_mask), 1)
