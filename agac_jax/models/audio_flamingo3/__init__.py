"""Audio Flamingo 3 (transformers' `AudioFlamingo3ForConditionalGeneration`, `nvidia/audio-flamingo-3-hf`).

A Whisper encoder run per 30 s window with average pooling, a two-layer MLP projector, a Qwen2 decoder,
and the `<sound>` placeholder expanded to the clip's 40 ms audio tokens. Built on Qwen2-Audio's port:

- `config`: `AudioFlamingo3Config` from the HF `config.json` (the shared encoder and text configs);
- `model`: the Flax module (`AudioFlamingo3ForConditionalGeneration`, the scoring program's interface,
  long clips as windows side by side on one 40 ms token grid), `init_params`;
- `checkpoints`: the HF directory as downloaded (sharded safetensors, index, config.json) to Flax
  parameters and back, by one name map;
- `prompts`: prompt ids and features as `AudioFlamingo3Processor` builds them from a directory's files
  (its chat template, 30 s windows, `<sound>` expansion, left padding);
- `parity`: the port against transformers (eager) on the same directory, and a random tiny model in the
  released layout.
"""
