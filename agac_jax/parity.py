"""The cross-framework check: transformers (eager attention) and the Flax port on the same inputs.

`run_parity` builds one left-padded batch (a prompt per clip, placeholders expanded), runs both
frameworks and reports, per quantity, the max absolute and max relative difference (relative to the
largest magnitude of the transformers value): audio embeddings, logits, every decoder layer's
attention, and the greedy tokens. Padding positions are left out of every comparison.

Directories without tokenizer files (as `save_pretrained` writes them for a bare model) get a fixed
synthetic prompt: two text ids, the placeholders, three text ids (ids chosen away from the audio id).
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from agac_jax import checkpoints
from agac_jax.audio.features import audio_token_count, log_mel, num_valid_frames
from agac_jax.audio.grids import HOP_LENGTH, MAX_SAMPLES, encoder_output_lengths
from agac_jax.models.generate import GenerationSettings, jitted_generate
from agac_jax.models.interface import PROBS, stack_sown
from agac_jax.models.qwen2_audio import Qwen2AudioForConditionalGeneration

FLOAT32_TOLERANCE = 1e-4


@dataclasses.dataclass
class Comparison:
    name: str
    max_abs: float
    max_rel: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.max_rel <= self.tolerance


@dataclasses.dataclass
class ParityReport:
    comparisons: list[Comparison]
    arrays: dict[str, np.ndarray]  # the Flax side, for --dump

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    def table(self) -> str:
        lines = [f"{'quantity':<22} {'max abs':>12} {'max rel':>12} {'tolerance':>10}  status"]
        for c in self.comparisons:
            lines.append(f"{c.name:<22} {c.max_abs:>12.3e} {c.max_rel:>12.3e} {c.tolerance:>10.0e}  "
                         f"{'ok' if c.ok else 'FAIL'}")
        return "\n".join(lines)


def synthetic_clips(max_samples: int = MAX_SAMPLES) -> list[np.ndarray]:
    """Two clips of different lengths: a 3 s tone in noise and a 7.5 s rising chirp, each cut to 40% and
    95% of `max_samples` (the encoder's window) when that is shorter."""
    rng = np.random.default_rng(0)
    t1 = np.arange(min(48_000, int(0.4 * max_samples))) / 16_000
    t2 = np.arange(min(120_000, int(0.95 * max_samples))) / 16_000
    tone = 0.3 * np.sin(2 * np.pi * 660 * t1) + 0.02 * rng.standard_normal(t1.size)
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t2 + 60 * t2**2))
    return [tone.astype(np.float32), chirp.astype(np.float32)]


def random_init_directory(config_json: str | Path, seed: int = 0) -> Path:
    """A random transformers model built from a `config.json`, saved to a temporary directory."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration as HFModel

    with open(config_json) as f:
        config = Qwen2AudioConfig(**{k: v for k, v in json.load(f).items() if k != "model_type"})
    torch.manual_seed(seed)
    directory = Path(tempfile.mkdtemp(prefix="agac_parity_"))
    HFModel(config).save_pretrained(directory)
    return directory


def _prompt_ids(directory: Path, config, questions: Sequence[str], n_tokens: Sequence[int]) -> list[list[int]]:
    has_tokenizer = (directory / "tokenizer.json").exists() or (directory / "vocab.json").exists()
    if has_tokenizer:
        from transformers import AutoTokenizer

        from agac_jax.prompts import expand_audio_placeholders, render_prompt

        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        texts = expand_audio_placeholders([render_prompt(tokenizer, q) for q in questions], n_tokens)
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    vocab = config.text.vocab_size
    text = [i for i in range(1, vocab) if i != config.audio_token_id][:5]
    return [text[:2] + [config.audio_token_id] * int(n) + text[2:] for n in n_tokens]


def build_inputs(directory: Path, config, clips: Sequence[np.ndarray], questions: Sequence[str]) -> dict:
    """Left-padded ids, masks and features of the encoder's whole window (transformers requires exactly
    2 x max_source_positions mel frames: 3000, 30 s, for the released model)."""
    n_mels, window = config.audio.num_mel_bins, config.audio.max_mel_frames
    features = np.stack([log_mel(c, n_mels, pad_to_samples=window * HOP_LENGTH, max_frames=window)[0]
                         for c in clips]).astype(np.float32)
    mel_lengths = np.asarray([num_valid_frames(len(c), window) for c in clips])
    n_tokens = [int(audio_token_count(int(m))) for m in mel_lengths]
    rows = _prompt_ids(directory, config, questions, n_tokens)
    s = max(map(len, rows))
    ids = np.zeros((len(rows), s), np.int64)
    mask = np.zeros((len(rows), s), np.int64)
    for i, row in enumerate(rows):
        ids[i, s - len(row):] = row
        mask[i, s - len(row):] = 1
    feature_mask = (np.arange(window)[None] < mel_lengths[:, None]).astype(np.int64)
    return dict(input_ids=ids, attention_mask=mask, features=features, feature_mask=feature_mask,
                mel_lengths=mel_lengths, n_tokens=np.asarray(n_tokens))


def _compare(name: str, ours: np.ndarray, theirs: np.ndarray, tolerance: float) -> Comparison:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    diff = np.abs(ours - theirs)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = max(float(np.abs(theirs).max()) if theirs.size else 0.0, 1e-30)
    return Comparison(name, max_abs, max_abs / scale, tolerance)


def run_parity(directory: str | Path, clips: Sequence[np.ndarray] | None = None,
               questions: Sequence[str] | None = None, max_new_tokens: int = 8,
               tolerance: float = FLOAT32_TOLERANCE, *, param_dtype: str = "float32",
               dtype: str = "float32") -> ParityReport:
    """Runs both frameworks (transformers in float32 at highest matmul precision, the Flax side in
    `param_dtype` weights and `dtype` compute) and compares them."""
    import torch
    from transformers import Qwen2AudioForConditionalGeneration as HFModel

    directory = Path(directory)
    loaded = checkpoints.load_hf_directory(directory, param_dtype=param_dtype, dtype=dtype)
    config = loaded.config
    window = config.audio.max_mel_frames * HOP_LENGTH
    clips = list(clips) if clips is not None else synthetic_clips(window)
    questions = list(questions) if questions else ["what is in the audio ?"] * len(clips)
    if len(questions) == 1:
        questions = questions * len(clips)
    if len(questions) != len(clips):
        raise ValueError(f"{len(questions)} questions for {len(clips)} clips; give one, or one per clip")
    for i, clip in enumerate(clips):
        if len(clip) > window:
            raise ValueError(f"clip {i} has {len(clip)} samples, more than this model's encoder window of {window} "
                             f"({config.audio.max_mel_frames} mel frames)")
    x = build_inputs(directory, config, clips, questions)
    hf = HFModel.from_pretrained(str(directory), attn_implementation="eager", dtype=torch.float32).eval()
    settings = GenerationSettings.from_hf(loaded.generation_config, config, max_new_tokens=max_new_tokens)

    with torch.no_grad():
        out = hf(input_ids=torch.tensor(x["input_ids"]), attention_mask=torch.tensor(x["attention_mask"]),
                 input_features=torch.tensor(x["features"]), feature_attention_mask=torch.tensor(x["feature_mask"]),
                 output_attentions=True)
        hf_audio = _hf_audio_embeddings(hf, x)
        hf_tokens = hf.generate(
            input_ids=torch.tensor(x["input_ids"]), attention_mask=torch.tensor(x["attention_mask"]),
            input_features=torch.tensor(x["features"]), feature_attention_mask=torch.tensor(x["feature_mask"]),
            do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=list(settings.eos_token_ids) or None,
            pad_token_id=settings.pad_token_id, suppress_tokens=list(settings.suppress_tokens),
            repetition_penalty=settings.repetition_penalty)[:, x["input_ids"].shape[1]:].numpy()

    model = Qwen2AudioForConditionalGeneration(config)
    with jax.default_matmul_precision("highest"):
        forward = jax.jit(lambda p, *a: model.apply({"params": p}, *a, mutable=["attention"]))
        logits, state = forward(loaded.params, x["input_ids"], x["attention_mask"], x["features"], x["mel_lengths"])
        audio, _ = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=model.encode_audio))(
            loaded.params, x["features"], x["mel_lengths"])
        tokens, _ = jitted_generate(config, settings)(loaded.params, x["input_ids"], x["attention_mask"],
                                                      x["features"], x["mel_lengths"])
    attentions = np.asarray(stack_sown(state, PROBS, config.text.num_hidden_layers))
    logits, audio, tokens = np.asarray(logits, np.float32), np.asarray(audio, np.float32), np.asarray(tokens)

    valid = x["attention_mask"].astype(bool)
    audio_valid = np.arange(audio.shape[1])[None] < x["n_tokens"][:, None]
    comparisons = [
        _compare("audio_embeddings", audio[audio_valid], hf_audio[:, : audio.shape[1]][audio_valid], tolerance),
        _compare("logits", logits[valid], out.logits.numpy()[valid], tolerance),
    ]
    pair = valid[:, None, :, None] & valid[:, None, None, :]
    for i, ref in enumerate(out.attentions):
        comparisons.append(_compare(f"attention layer {i}", np.where(pair, attentions[i], 0),
                                    np.where(pair, ref.numpy(), 0), tolerance))
    n = hf_tokens.shape[1]
    mismatched = int(np.sum(tokens[:, :n] != hf_tokens))
    comparisons.append(Comparison("greedy tokens (count)", float(mismatched), float(mismatched), 0.0))
    arrays = dict(audio_embeddings=audio, logits=logits, attentions=attentions, greedy_tokens=tokens,
                  input_ids=x["input_ids"])
    return ParityReport(comparisons, arrays)


def _hf_audio_embeddings(hf: Any, x: dict) -> np.ndarray:
    """transformers' projected audio states, with the encoder mask its forward builds."""
    import torch
    from transformers.masking_utils import create_bidirectional_mask

    positions = hf.model.audio_tower.config.max_source_positions
    after_conv = torch.tensor(encoder_output_lengths(x["mel_lengths"])[0])
    valid = (torch.arange(positions)[None] < after_conv[:, None]).long()
    mask = create_bidirectional_mask(config=hf.model.audio_tower.config,
                                     inputs_embeds=torch.zeros(len(valid), positions, 1), attention_mask=valid)
    hidden = hf.model.audio_tower(torch.tensor(x["features"]), attention_mask=mask).last_hidden_state
    return hf.model.multi_modal_projector(hidden).numpy()
