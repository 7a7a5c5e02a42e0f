"""Qwen2-Audio checkpoint directories laid out as users download them, with the real Qwen2 BPE tokenizer.

`../shared/fixtures/qwen2_tokenizer/` holds the real `vocab.json` and `merges.txt`; `write_layout` adds
the files of one released layout around them (read from the fixture, never copied into the project):

- "hub_main": Qwen2-Audio-7B-Instruct's main branch: Qwen2's plain *text* chat template in
  `tokenizer_config.json`, no processor template (transformers then uses its default audio template);
- "chat_template_json": the audio template in the legacy processor file `chat_template.json`, none in
  `tokenizer_config.json`;
- "resaved": a transformers 5 `save_pretrained` of the processor (`chat_template.jinja`);
- "base": Qwen2-Audio-7B (no chat training), prompted in its model card's raw form.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from agac_jax.models.qwen2_audio.tokenizer import QWEN2_AUDIO_CHAT_TEMPLATE

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "qwen2_tokenizer"
LAYOUTS = ("hub_main", "chat_template_json", "resaved", "base")
SPECIAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|AUDIO|>": 151646,
               "<|audio_bos|>": 151647, "<|audio_eos|>": 151648}
VOCAB_SIZE = 151_680  # padded past the special ids, as the released embedding (156,032) is
# Qwen2's text template, as Qwen2-Audio-7B-Instruct's tokenizer_config.json carries it.
QWEN2_TEXT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
PREPROCESSOR = {
    "chunk_length": 30, "feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128,
    "hop_length": 160, "n_fft": 400, "n_samples": 480000, "nb_max_frames": 3000, "padding_side": "right",
    "padding_value": 0.0, "processor_class": "Qwen2AudioProcessor", "return_attention_mask": True,
    "sampling_rate": 16000,
}


def _tokenizer_config(chat_template: str | None) -> dict:
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in SPECIAL_IDS.items()}
    config = {
        "add_prefix_space": False, "added_tokens_decoder": added,
        "additional_special_tokens": [t for t in SPECIAL_IDS if t != "<|endoftext|>"],
        "bos_token": None, "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
        "model_max_length": 32768, "pad_token": "<|endoftext|>", "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    return config


def write_processor_files(directory: Path, layout: str) -> Path:
    """The tokenizer and processor files of one layout (LAYOUTS) in `directory`."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; one of {LAYOUTS}")
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(FIXTURE / name, directory / name)
    text_template = QWEN2_TEXT_TEMPLATE if layout in ("hub_main", "base") else None
    (directory / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(text_template), indent=2))
    (directory / "preprocessor_config.json").write_text(json.dumps(PREPROCESSOR, indent=2))
    if layout == "chat_template_json":
        (directory / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2_AUDIO_CHAT_TEMPLATE}))
    if layout == "resaved":
        (directory / "chat_template.jinja").write_text(QWEN2_AUDIO_CHAT_TEMPLATE)
    return directory


def write_layout(directory: Path, layout: str, seed: int = 0) -> Path:
    """A tiny random Qwen2-Audio (128 mel bins, the released vocabulary and special ids) in one layout."""
    import torch
    from transformers import GenerationConfig, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    write_processor_files(directory, layout)
    config = Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=128, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16),
        text_config=dict(model_type="qwen2", vocab_size=VOCAB_SIZE, hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         tie_word_embeddings=False, initializer_range=0.05),
        audio_token_index=SPECIAL_IDS["<|AUDIO|>"])
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config)
    model.generation_config = GenerationConfig(eos_token_id=[SPECIAL_IDS["<|im_end|>"], SPECIAL_IDS["<|endoftext|>"]],
                                               pad_token_id=SPECIAL_IDS["<|endoftext|>"], max_new_tokens=4)
    model.save_pretrained(directory)
    return directory
