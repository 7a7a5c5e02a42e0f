"""The PyTorch reference as a command, for timing it the way `launch.score` is run (process start to JSON):

  .venv/bin/python -m agac_jax.reference.score_files --checkpoint=assets/tiny_qwen2audio \
      --audio=a.wav --audio=b.wav --question="is there a dog ?" --output=/tmp/ref.json

What a PyTorch user writes: transformers' processor builds the prompt and the log-mel features, the
greedy answer is generated under the audio, and `torch_scores.score_clip` scores each clip in the
"strong" mode (SDPA wherever no attention map is read) with `launch.score`'s default local score
(integrated gradients, 8 steps in one batch, on the log-odds, |local| over 9 tokens, alpha 0.75).
One JSON record per clip (answer ids, local, global and fused token scores, stage seconds). Imports
neither jax nor the JAX half of agac_jax.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

SAMPLE_RATE = 16_000
DEFAULT_LOCAL_SCORE = dict(estimator="integrated_gradients", ig_steps=8, target="log_odds", local_sign="magnitude",
                           local_smooth=9, alpha=0.75, window=1)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="Hugging Face Qwen2-Audio directory.")
    parser.add_argument("--audio", action="append", required=True, help="16 kHz mono audio file; repeat.")
    parser.add_argument("--question", required=True)
    parser.add_argument("--estimator", default=DEFAULT_LOCAL_SCORE["estimator"],
                        choices=("integrated_gradients", "occlusion"))
    parser.add_argument("--max_new_tokens", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=32, help="Occlusion gates per batch (IG: every step at once).")
    parser.add_argument("--mode", default="strong", choices=("strong", "eager"))
    parser.add_argument("--output", default=None, help="JSON file; default: JSON lines on stdout.")
    return parser.parse_args(argv)


def load_audio(path: str) -> np.ndarray:
    """A 16 kHz file as mono float32."""
    import soundfile

    wave, rate = soundfile.read(path, dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:
        raise ValueError(f"{path}: {rate} Hz; expected {SAMPLE_RATE}")
    return wave.mean(axis=1)


def clip_inputs(processor, question: str, wave: np.ndarray) -> dict[str, np.ndarray]:
    """input_ids [S] with expanded placeholders, features and mask [n_mels, 3000] / [3000], and the
    features of silence of the clip's length, from transformers' processor and chat template."""
    conversation = [{"role": "user", "content": [{"type": "audio", "audio_url": "clip"},
                                                 {"type": "text", "text": question}]}]
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    audio = processor(text=text, audio=[wave], sampling_rate=SAMPLE_RATE, return_tensors="np")
    silence = processor.feature_extractor(np.zeros_like(wave), sampling_rate=SAMPLE_RATE, return_tensors="np")
    return dict(input_ids=audio["input_ids"][0], features=audio["input_features"][0],
                feature_mask=audio["feature_attention_mask"][0], silence_features=silence["input_features"][0])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    from agac_jax.reference import torch_scores

    start = time.perf_counter()
    processor = AutoProcessor.from_pretrained(args.checkpoint)
    implementation = "sdpa" if args.mode == "strong" else "eager"
    model = Qwen2AudioForConditionalGeneration.from_pretrained(args.checkpoint,
                                                               attn_implementation=implementation).eval()
    options = dict(DEFAULT_LOCAL_SCORE, estimator=args.estimator)
    chunk = options["ig_steps"] if args.estimator == "integrated_gradients" else args.chunk
    records = []
    for path in args.audio:  # score_clip runs its passes under inference_mode, IG's backward outside it
        inputs = clip_inputs(processor, args.question, load_audio(path))
        scores = torch_scores.score_clip(model, **inputs, **options, max_new_tokens=args.max_new_tokens,
                                         chunk=chunk, clip_id=path, mode=args.mode)
        records.append(dict(file=path, answer_ids=scores.answer_ids.tolist(), local=scores.local.tolist(),
                            global_=scores.global_.tolist(), fused=scores.fused.tolist(),
                            seconds=scores.seconds))
    text = json.dumps(records)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    else:
        for record in records:
            print(json.dumps(record))
    print(f"scored {len(records)} clips in {time.perf_counter() - start:.2f} s after imports "
          f"({torch.get_num_threads()} torch threads)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
