"""PyTorch reference of the scoring method on transformers' Qwen2-Audio, Audio Flamingo 3 and Voxtral
(no jax imported)."""

from agac_jax.reference.torch_scores import (
    FAMILIES,
    AudioFamily,
    ReferenceClip,
    ReferenceScores,
    audio_family,
    grid_frames,
    grid_keep,
    keep_count,
    reference_keep,
    score_clip,
    score_clips,
    token_scores_to_frames,
)

__all__ = [
    "FAMILIES",
    "AudioFamily",
    "ReferenceClip",
    "ReferenceScores",
    "audio_family",
    "grid_frames",
    "grid_keep",
    "keep_count",
    "reference_keep",
    "score_clip",
    "score_clips",
    "token_scores_to_frames",
]
