"""Voxtral (transformers' `VoxtralForConditionalGeneration`, hub `mistralai/Voxtral-Mini-3B-2507`) in Flax.

A Whisper encoder run on whole 30 s windows (no key mask, no pooling) whose 1500 states per window are
stacked four at a time into 80 ms audio tokens (375 a window, 12.5 a second), a two-layer GELU projector,
and a Llama/Mistral decoder (no biases, GQA, head_dim 128, RoPE base 1e8) with an untied head.

- `config`: `VoxtralConfig` from config.json (transformers' defaults), the 80 ms grid
  (`token_samples` 1280, `frames_per_token` 8, `tokens_per_window` 375);
- `model`: the Flax module `VoxtralForConditionalGeneration` on the scoring program's interface
  (`models.interface`; the gate mixes projected 80 ms token embeddings), `init_params`;
- `checkpoints`: the downloaded directory (config.json, safetensors shards + index, transformers 4 or 5
  names) to Flax parameters by one name map, streamed and optionally sharded; `save_hf_directory`;
- `prompts`: prompt ids and features as `VoxtralProcessor.apply_chat_template` builds them (mistral-common
  tekken tokenizer, 30 s padding, placeholder expansion);
- `tokenizer`: small tekken.json tokenizers with Voxtral's special tokens, built offline;
- `parity`: `run_parity(directory)` against transformers (eager, float32) and `random_init_directory`.
"""
