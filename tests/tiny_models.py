"""Tiny Qwen2-Audio checkpoints made by transformers itself, for the cross-framework tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Three shapes that exercise the port differently: grouped-query ratios 3, 1 and 8; head sizes 8, 16
# and an explicit 12 (not hidden / heads); 80 and 128 mel bins; untied and tied embeddings.
TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "gqa3_mel80": dict(
        audio_config=dict(num_mel_bins=80, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                          d_model=32),
        text_config=dict(model_type="qwen2", vocab_size=96, hidden_size=48, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                         tie_word_embeddings=False, initializer_range=0.05),
        audio_token_index=95,
    ),
    "mha_mel128_tied": dict(
        audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=48,
                          d_model=24),
        text_config=dict(model_type="qwen2", vocab_size=80, hidden_size=64, intermediate_size=128,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=4,
                         tie_word_embeddings=True, initializer_range=0.05),
        audio_token_index=79,
        tie_word_embeddings=True,
    ),
    "mqa_headdim12_mel128": dict(
        audio_config=dict(num_mel_bins=128, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=32,
                          d_model=16),
        text_config=dict(model_type="qwen2", vocab_size=120, hidden_size=40, intermediate_size=72,
                         num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=1, head_dim=12,
                         rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
                         tie_word_embeddings=False, initializer_range=0.05),
        audio_token_index=100,
    ),
}

# transformers' own tester shape: an encoder window of max_source_positions 100, i.e. 200 mel frames
# (2 s) instead of the released model's 1500 (30 s). Every length limit must follow the checkpoint.
SHORT_WINDOW_CONFIGS: dict[str, dict[str, Any]] = {
    "window2s_gqa3": dict(
        audio_config=dict(num_mel_bins=80, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                          d_model=32, max_source_positions=100),
        text_config=dict(model_type="qwen2", vocab_size=96, hidden_size=48, intermediate_size=96,
                         num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                         tie_word_embeddings=False, initializer_range=0.05),
        audio_token_index=95,
    ),
}
_ALL_CONFIGS = {**TINY_CONFIGS, **SHORT_WINDOW_CONFIGS}


def make_hf_checkpoint(directory: Path, name: str, seed: int = 0) -> Path:
    """Builds `TINY_CONFIGS[name]` with random weights in transformers and saves it to `directory`."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen2AudioConfig(**_ALL_CONFIGS[name])
    model = Qwen2AudioForConditionalGeneration(config)
    model.save_pretrained(directory)
    return directory


def load_hf_eager(directory: Path):
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(directory, attn_implementation="eager").eval()


def make_scoring_checkpoint(directory: Path, name: str = "gqa3_mel80", seed: int = 0,
                            words: tuple[str, ...] = ("is", "there", "a", "tone", "chirp", "?", "yes", "no")) -> Path:
    """A tiny random Qwen2-Audio directory with a word tokenizer, processor files and a generation
    config, so the whole pipeline (prompts, scoring, generation) runs on it as on a real checkpoint."""
    import torch
    from transformers import GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from agac_jax.models.qwen2_audio.tokenizer import AUDIO_TOKEN, IM_END, save_processor_files

    spec = _ALL_CONFIGS[name]
    n_mels = spec["audio_config"]["num_mel_bins"]
    tokenizer = save_processor_files(directory, list(words), num_mel_bins=n_mels)
    text = dict(spec["text_config"], vocab_size=len(tokenizer))
    eos = tokenizer.convert_tokens_to_ids(IM_END)
    torch.manual_seed(seed)
    config = Qwen2AudioConfig(**dict(spec, text_config=text,
                                     audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)))
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                                               max_new_tokens=4)
    model.save_pretrained(directory)
    return directory
