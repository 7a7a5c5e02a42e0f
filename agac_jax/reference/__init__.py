"""PyTorch reference of the scoring method on transformers' Qwen2-Audio (no jax imported)."""

from agac_jax.reference.torch_scores import (
    ReferenceClip,
    ReferenceScores,
    keep_count,
    reference_keep,
    score_clip,
    score_clips,
    token_scores_to_frames,
)

__all__ = [
    "ReferenceClip",
    "ReferenceScores",
    "keep_count",
    "reference_keep",
    "score_clip",
    "score_clips",
    "token_scores_to_frames",
]
