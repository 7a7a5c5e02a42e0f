"""Training of the tiny Qwen2-Audio shipped in assets/tiny_qwen2audio (`launch/train.py`).

  model.py          tokenizer and processor files, the model config from the training config, initial params
  data.py           the encoded training set (`TrainingSet`), auxiliary targets, batch order by (seed, step)
  losses.py         the shared-prefix teacher-forced forward pass, the answer loss, the training-only heads
  steps.py          the optimiser, the jitted train and eval steps, teacher-forced validation accuracy
  checkpointing.py  orbax `CheckpointManager` checkpoints of parameters, optimiser state and model config
  loop.py           `train` (resumable) and `export` to a Hugging Face directory
  evaluation.py     greedy test accuracy with the audio and with silence
"""
