"""V1b on corpora of different diversity, one vocabulary: the data-coherence axis the forces paper leaves
open (arXiv 2606.19367 §7): ``--config=configs/corpus_axis.py:NAME``.

NAME: ``python-docs`` (the Python documentation), ``kernel-docs`` (the Linux kernel's), ``docs-large`` (both:
V1b itself), ``shuffled`` (docs-large with its tokens in one random order: the unigram statistics without any
structure). All are encoded by the BPE trained on docs-large, so only the data differs: 2.60 / 5.98 / 8.58 /
8.58 M tokens, so 20k steps are 94 / 41 / 29 / 29 epochs, the repetition axis the paper names beside
coherence. ``unigram``: tokens drawn independently from docs-large's unigram distribution, fresh every step
(``data.sampling="unigram"``): the control that, unlike ``shuffled``'s one permutation, cannot be memorised.
"""

from configs import default, pythia70m_v1b

CORPORA = {  # corpus, tokens shuffled, sampling
    "python-docs": ("python-docs", False, "epochs"),
    "kernel-docs": ("kernel-docs", False, "epochs"),
    "docs-large": ("docs-large", False, "epochs"),
    "shuffled": ("docs-large", True, "epochs"),
    "unigram": ("docs-large", False, "unigram"),
}


def get_config(corpus: str = "shuffled"):
    name, shuffled, sampling = default.variant(CORPORA, corpus, "corpus")
    config = pythia70m_v1b.get_config()
    config.data.corpus, config.data.shuffle_tokens, config.data.sampling = name, shuffled, sampling
    config.data.tokenizer_corpus = "docs-large"
    return config
