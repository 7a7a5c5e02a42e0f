"""Generated audio question-answering benchmarks whose evidence is known: the shared pieces and one
module per benchmark.

Shared:
  signals    the sounds on the 16 kHz grid: event renderers (tones, chirps, ...), backgrounds (pink,
             white, brown noise, hum), unit RMS, fades
  events     the 8 event classes, `Event`, `EventSample`, `render_event`, spreading events over a clip
  questions  the existence and order templates, vocabulary, `BalancedSchedule`
  splits     split seeds (`split_streams`), writing and reading a generated split (manifest + WAVs)

Benchmarks, each holding only what is its own (clip plan, layout, background, mixing, records):
  synthetic  `synthetic`: one to three separate events over quiet pink noise
  scenes     `synthetic_scenes`: quiet evidence, loud distractors, overlaps, varied backgrounds,
             count questions

Nothing is imported here, so `from agac_jax.data.synthetic_audio import synthetic` loads one benchmark.
"""
