"""V1b on corpora of different diversity, one vocabulary: the data-coherence axis the forces paper leaves
open (arXiv 2606.19367 §7): ``--config=configs/corpus_axis.py:NAME``.

NAME: ``python-docs`` (the Python documentation), ``kernel-docs`` (the Linux kernel's), ``docs-large`` (both:
V1b itself), ``shuffled`` (docs-large with its tokens in one random order: the unigram statistics without any
structure). All are encoded by the BPE trained on docs-large, so only the data differs: 2.60 / 5.98 / 8.58 /
8.58 M tokens, so 20k steps are 94 / 41 / 29 / 29 epochs, the repetition axis the paper names beside
coherence.
"""

from configs import default, pythia70m_v1b

CORPORA = {  # corpus, tokens shuffled
    "python-docs": ("python-docs", False),
    "kernel-docs": ("kernel-docs", False),
    "docs-large": ("docs-large", False),
    "shuffled": ("docs-large", True),
}


def get_config(corpus: str = "shuffled"):
    name, shuffled = default.variant(CORPORA, corpus, "corpus")
    config = pythia70m_v1b.get_config()
    config.data.corpus, config.data.shuffle_tokens = name, shuffled
    config.data.tokenizer_corpus = "docs-large"
    return config
