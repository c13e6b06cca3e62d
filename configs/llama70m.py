"""The Llama-style control of arXiv 2606.19367 §2.4: V1b's data and optimizer, SwiGLU/RMSNorm/RoPE/no bias."""

from configs import default, pythia70m_v1b


def get_config(seed: str = "1"):
    config = pythia70m_v1b.get_config(seed)
    config.model = default.model("llama-70m", dtype="bfloat16")
    return config
