"""Training configuration of the tiny Qwen2-Audio shipped in assets/tiny_qwen2audio.

Reproduce the shipped model (16 minutes on the 2 CPU cores of the development machine, set-up of the
data, compilation and the final evaluation included):

  .venv/bin/python -m launch.train --config=configs/train_tiny.py --workdir=runs/train_tiny \
      --export=assets/tiny_qwen2audio

Measure its accuracy on the synthetic test split, with the audio and with silence in its place:

  .venv/bin/python -m launch.train --config=configs/train_tiny.py --eval_only=assets/tiny_qwen2audio

A smoke run of the whole path (train, checkpoint, evaluate) on a small model and few clips:

  .venv/bin/python -m launch.train --config=configs/train_tiny.py:local --workdir=/tmp/agac_train_local

The same model trained for the harder synthetic_scenes benchmark (agac_jax/data/scenes.py), mixed
with clips of the synthetic benchmark, exported to assets/tiny_qwen2audio_scenes:

  .venv/bin/python -m launch.train --config=configs/train_tiny.py:scenes --workdir=runs/train_tiny_scenes \
      --export=assets/tiny_qwen2audio_scenes

Variants (`--config=configs/train_tiny.py:NAME`):
  default  the shipped model's training, exactly;
  local    a 1-layer, 32-wide model, 40 training clips, 6 steps, 20 test questions (2.6 minutes
           measured on the busy 2-core machine, most of it compiling the three frame buckets);
  scenes   the default model on 16000 scenes clips and 1000 synthetic ones (the union vocabulary: the
           count question's "more", "than", "one" added; 314438 training questions), half of them with
           event-free frames cut to zeros (`data.silence_share`), 6000 steps, with the counting and
           recurrence heads, evaluated on 250 scenes test questions. Run in full
           (assets/tiny_qwen2audio_scenes, 2026-12-06): 40 minutes on the 2 cores, 6 of them encoding
           the clips, 6000 steps in 34; test accuracy with audio 96.4% (existence 98.9%, order 100%,
           count 91.1%), with silence 49.2%. The same run without the cut clips reached 96.8% (count
           95.6%) but lost answers on the insertion clips' silence (WORKSPACE.md, the estimator
           default). Fewer clips were memorised: 8000 clips at 5000 steps reached 93.6% (count 85.6%,
           train accuracy 0.98 against 0.91 on validation), 2000 clips without the counting heads 83.2%.

Fields can be overridden on the command line, e.g. `--config.optim.steps=200`.
"""

from __future__ import annotations

import ml_collections

VARIANTS = ("default", "local", "scenes")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The training config; `arg` picks a variant of VARIANTS (None: default)."""
    variant = arg or "default"
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r} of train_tiny; choose one of {VARIANTS}")
    c = ml_collections.ConfigDict()
    c.seed = 0  # parameter initialisation and batch order
    c.num_mel_bins = 80  # Whisper log-mel bins (80 or 128); 80 is cheaper
    c.bucket_seconds = (6, 9, 12)  # frame buckets of the training batches; 12 s holds the longest clip

    c.model = ml_collections.ConfigDict()
    c.model.audio_d_model = 64  # encoder width
    c.model.audio_layers = 2  # encoder transformer layers
    c.model.audio_heads = 4  # encoder attention heads
    c.model.audio_ffn = 128  # encoder MLP width
    c.model.max_source_positions = 1500  # encoder position table; 1500 so transformers accepts 30 s inputs
    c.model.sinusoid_positions = True  # initialise the position table with Whisper's sinusoids
    c.model.hidden_size = 64  # decoder width
    c.model.layers = 4  # decoder layers: reading the question, listening (two), answering
    c.model.heads = 4  # decoder query heads
    c.model.kv_heads = 2  # decoder key/value heads (grouped-query attention)
    c.model.intermediate_size = 192  # decoder SwiGLU width
    c.model.max_position_embeddings = 2048  # decoder positions (prompts here are under 400 tokens)
    c.model.rope_theta = 10000.0  # RoPE base

    c.data = ml_collections.ConfigDict()
    c.data.benchmark = "synthetic"  # benchmark of every split: synthetic | scenes (training.data.BENCHMARKS)
    c.data.mix_benchmark = ""  # a second benchmark whose training clips join the training split ("": none)
    c.data.mix_clips = 0  # training clips of mix_benchmark
    c.data.seed = 0  # seed of the benchmark's splits (generate_split)
    c.data.train_clips = 2000  # training clips
    c.data.all_questions = True  # every question about each clip (8 existence + order pairs, scenes: + count)
    c.data.validation_clips = 80  # validation clips for the progress evaluation
    c.data.test_clips = 130  # test clips generated for the final evaluation
    c.data.test_questions = 200  # test questions measured (the first ones of the split)
    c.data.silence_share = 0.0  # share of training clips with event-free frames cut to zeros (training.data)
    c.data.silence_cut = (0.25, 1.0)  # range of the per-clip probability that an event-free frame is cut

    c.optim = ml_collections.ConfigDict()
    c.optim.steps = 2400  # optimiser steps
    c.optim.batch_clips = 8  # clips per step, each encoded once
    c.optim.questions_per_clip = 8  # questions per clip and step (so 64 a step; they share the clip's prefix)
    c.optim.order_share = 0.5  # share of a clip's questions drawn from its order questions, when it has any
    c.optim.count_share = 0.0  # share drawn from its count questions, when it has any (scenes only)
    c.optim.short_clip_steps = 200  # first steps on the smallest frame bucket only (curriculum)
    c.optim.peak_learning_rate = 3e-3  # after warmup
    c.optim.warmup_steps = 50  # linear warmup from 0
    c.optim.end_learning_rate = 2e-5  # end of the cosine decay
    c.optim.weight_decay = 0.01  # adamw decoupled weight decay
    c.optim.grad_clip_norm = 1.0  # global gradient norm clip
    c.optim.tagging_weight = 1.0  # weight of the auxiliary per-audio-token event tagging loss (0: none)
    c.optim.reading_weight = 1.0  # weight of the auxiliary loss reading the question's classes (0: none)
    c.optim.listening_weight = 1.0  # weight of the auxiliary loss recalling the clip's events in order (0: none)
    c.optim.counting_weight = 0.0  # weight of the auxiliary loss counting each class's occurrences (0: none)
    c.optim.recurrence_weight = 0.0  # weight of the auxiliary per-audio-token loss "its class recurs" (0: none)

    c.log_every = 25  # steps between loss lines
    c.eval_every = 400  # steps between validation evaluations (teacher-forced answer accuracy); 0: none
    c.checkpoint_every = 400  # steps between orbax checkpoints
    c.keep_checkpoints = 2  # newest checkpoints kept in the workdir (0: all)
    c.eval_batch_size = 25  # questions per generation batch in the final evaluation (features padded to 13 s)
    c.max_new_tokens = 4  # generation_config.json max_new_tokens

    if variant == "local":
        c.model.update(audio_d_model=16, audio_layers=1, audio_heads=2, audio_ffn=32)  # a 1-layer encoder
        c.model.update(hidden_size=32, layers=1, heads=2, kv_heads=1, intermediate_size=64)  # a 1-layer decoder
        c.data.train_clips = 40  # a few seconds of feature computation
        c.data.validation_clips = 8  # one validation batch or two
        c.data.test_clips = 16  # enough clips for test_questions
        c.data.test_questions = 20  # a short final evaluation
        c.optim.steps = 6  # a smoke run: two checkpoints
        c.optim.batch_clips = 2  # clips per step
        c.optim.questions_per_clip = 2  # questions per clip and step
        c.optim.short_clip_steps = 0  # every bucket from the first step
        c.optim.peak_learning_rate = 1e-2  # a visible loss drop within 6 steps
        c.optim.warmup_steps = 1  # warm up in one step
        c.optim.end_learning_rate = 1e-3  # end of the short decay
        c.log_every = 1  # a loss line every step
        c.eval_every = 0  # no validation during the smoke run
        c.checkpoint_every = 3  # checkpoints at steps 3 and 6
        c.eval_batch_size = 10  # two generation batches of the 20 test questions
    if variant == "scenes":
        c.data.benchmark = "scenes"  # scenes clips for every split (agac_jax/data/scenes.py)
        c.data.mix_benchmark = "synthetic"  # plus clips of the synthetic benchmark in the training split
        c.data.mix_clips = 1000  # synthetic clips; the 299 under 6 s make the 6 s bucket of the curriculum's first steps
        c.data.train_clips = 16000  # scenes training clips (6 to 12 s, 3 to 5 events); 2000 and 8000 were memorised
        c.data.validation_clips = 80  # scenes validation clips (220 questions)
        c.data.test_clips = 100  # scenes test clips (280 questions, 229 with evidence)
        c.data.test_questions = 250  # the first 250 of them measured
        c.data.silence_share = 0.5  # half the clips heard with background cut away, as insertion clips are
        c.optim.steps = 6000  # more steps than the default: more clips, harder questions
        c.optim.order_share = 0.375  # 3 of a clip's 8 questions from its order questions
        c.optim.count_share = 0.375  # 3 from its count questions (the other 2 existence questions)
        c.optim.counting_weight = 1.0  # the count question needs how often a class occurs, not just where first
        c.optim.recurrence_weight = 1.0  # and each event's tokens to know whether their class occurs again
    return c
