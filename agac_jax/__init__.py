"""agac-jax: attention-guided audio compression for audio-language models."""

__version__ = "0.1.0"
