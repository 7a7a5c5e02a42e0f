"""Qwen2-Audio (transformers' `Qwen2AudioForConditionalGeneration`): the Flax port and what surrounds it.

- `model`: the Flax module (`Qwen2AudioForConditionalGeneration`) on the shared encoder and decoder
  layers (`models.audio_encoder`, `models.decoder`), `init_params`;
- `checkpoints`: the Hugging Face directory as it is downloaded (safetensors shards, config.json) to
  Flax parameters and back, by one name map; Orbax; pickles converted on request;
- `prompts`: questions to prompt ids and features the way `Qwen2AudioProcessor` builds them;
- `tokenizer`: word-level tokenizers with Qwen2-Audio's special tokens, for tiny offline models;
- `parity`: the port against transformers (eager) on the same directory;
- `adapter`: what the model-agnostic `scoring.Scorer` needs from this family.
"""
