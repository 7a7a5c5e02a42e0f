"""The cross-framework check: transformers (eager attention) and the Flax port on the same inputs.

`run_parity` builds one left-padded batch (a prompt per clip, placeholders expanded) twice: the
transformers side with transformers' own `Qwen2AudioProcessor` from the checkpoint directory, the Flax
side with `agac_jax.models.qwen2_audio.prompts`. It compares the prompt ids first (stopping at the first differing
position), then reports, per quantity, the max absolute and max relative difference (relative to the
largest magnitude of the transformers value): log-mel features, audio embeddings, logits, every decoder
layer's attention, and the greedy tokens. Padding positions are left out of every comparison. A
directory without tokenizer and processor files is refused: parity never substitutes a prompt.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.audio.grids import HOP_LENGTH, MAX_SAMPLES, SAMPLE_RATE, encoder_output_lengths
from agac_jax.models.generate import GenerationSettings, jitted_generate
from agac_jax.models.interface import PROBS, stack_sown
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration
from agac_jax.models.qwen2_audio.prompts import (DEFAULT_PROMPT_FORMAT, RAW_AUDIO_ITEM, PromptError, PromptFormat, build_prompts,
                              load_prompt_format)

FLOAT32_TOLERANCE = 1e-4
# Log-mel features against the processor's (WhisperFeatureExtractor takes its float32 torch STFT where
# torch is installed: 4.5e-5 relative on the default clips; its float64 numpy path agrees to 1.2e-7).
FEATURE_TOLERANCE = 1e-4
# The random model's tokenizer words: the default questions' (`run_parity`) and yes/no answers.
PARITY_WORDS = ("What", "is", "in", "the", "audio", "?", "Is", "there", "a", "dog", "yes", "no", "Yes", "No")


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
    message: str = ""  # why the check stopped early (the prompt ids differ)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)

    def table(self) -> str:
        lines = [f"{'quantity':<22} {'max abs':>12} {'max rel':>12} {'tolerance':>10}  status"]
        for c in self.comparisons:
            lines.append(f"{c.name:<22} {c.max_abs:>12.3e} {c.max_rel:>12.3e} {c.tolerance:>10.0e}  "
                         f"{'ok' if c.ok else 'FAIL'}")
        if self.message:
            lines.append(self.message)
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
    """A random transformers model of a `config.json`'s shapes, saved to a temporary directory with a
    word-level tokenizer and processor files (`agac_jax.models.qwen2_audio.tokenizer.save_processor_files`, no download); the
    config's `audio_token_index` becomes the tokenizer's and its vocabulary at least the tokenizer's."""
    import torch
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration as HFModel

    from agac_jax.models.qwen2_audio.tokenizer import AUDIO_TOKEN, save_processor_files

    with open(config_json) as f:
        fields = {k: v for k, v in json.load(f).items() if k != "model_type"}
    directory = Path(tempfile.mkdtemp(prefix="agac_parity_"))
    n_mels = fields.get("audio_config", {}).get("num_mel_bins", 128)
    tokenizer = save_processor_files(directory, PARITY_WORDS, num_mel_bins=n_mels)
    text = dict(fields.get("text_config", {}))
    text["vocab_size"] = max(int(text.get("vocab_size", 0)), len(tokenizer))
    fields.update(text_config=text, audio_token_index=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN))
    torch.manual_seed(seed)
    HFModel(Qwen2AudioConfig(**fields)).save_pretrained(directory)
    return directory


def _conversation_with_audio(question: str, clips: Sequence[np.ndarray]) -> list[dict]:
    items = [{"type": "audio", "audio": np.asarray(c, np.float32)} for c in clips]
    return [{"role": "user", "content": [*items, {"type": "text", "text": question}]}]


def processor_inputs(directory: Path, fmt: PromptFormat, clips: Sequence[np.ndarray],
                     questions: Sequence[str]) -> dict:
    """transformers' own inputs, left-padded: `Qwen2AudioProcessor.from_pretrained(directory)` with the model
    card's conversation (`apply_chat_template(..., sanitize_control_tokens=True)`) or, for the raw format,
    the processor on the base model's prompt text."""
    from transformers import Qwen2AudioProcessor

    processor = Qwen2AudioProcessor.from_pretrained(str(directory))
    kwargs = dict(padding=True, padding_side="left", return_tensors="np")
    if fmt.kind == "chat":
        conversations = [_conversation_with_audio(q, [c]) for q, c in zip(questions, clips)]
        out = processor.apply_chat_template(conversations, chat_template=fmt.template, add_generation_prompt=True,
                                            tokenize=True, return_dict=True, sanitize_control_tokens=True,
                                            processor_kwargs=kwargs)
    else:
        texts = [RAW_AUDIO_ITEM + q for q in questions]
        out = processor(text=texts, audio=[np.asarray(c, np.float32) for c in clips], sampling_rate=SAMPLE_RATE,
                        **kwargs)
    return {k: np.asarray(v) for k, v in out.items()}


def first_difference(ours: np.ndarray, our_mask: np.ndarray, theirs: np.ndarray, their_mask: np.ndarray) -> str | None:
    """None when every prompt's ids (padding left out) are equal, else where the first prompt that differs
    first differs: 'prompt 1, position 17: 151646 (agac_jax) vs 40 (...)' or where one of them ends."""
    for row, (a, b) in enumerate(zip(ours, theirs)):
        a, b = a[our_mask[row].astype(bool)], b[their_mask[row].astype(bool)]
        n = min(len(a), len(b))
        differ = np.nonzero(a[:n] != b[:n])[0]
        if differ.size:
            i = int(differ[0])
            return f"prompt {row}, position {i}: {int(a[i])} (agac_jax) vs {int(b[i])} (transformers' processor)"
        if len(a) != len(b):
            return (f"prompt {row}, position {n}: agac_jax's prompt has {len(a)} ids, transformers' processor's "
                    f"{len(b)}")
    if len(ours) != len(theirs):
        return f"{len(ours)} prompts (agac_jax) vs {len(theirs)} (transformers' processor)"
    return None


def build_inputs(directory: Path, config, clips: Sequence[np.ndarray], questions: Sequence[str],
                 fmt: PromptFormat) -> dict:
    """The Flax side's left-padded ids, masks and features of the encoder's whole window (transformers
    requires exactly 2 x max_source_positions mel frames: 3000, 30 s, for the released model), built by
    `prompts.build_prompts` from the directory's tokenizer and prompt format."""
    from transformers import AutoTokenizer

    window = config.audio.max_mel_frames
    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    batch = build_prompts(tokenizer, list(questions), list(clips), prompt_format=fmt,
                          num_mel_bins=config.audio.num_mel_bins, pad_to_frames=window, padding_side="left",
                          max_frames=window)
    mel_lengths = batch.feature_attention_mask.sum(-1)
    return dict(input_ids=batch.input_ids, attention_mask=batch.attention_mask, features=batch.input_features,
                feature_mask=batch.feature_attention_mask.astype(np.int64), mel_lengths=mel_lengths,
                n_tokens=batch.num_audio_tokens)


def compare(name: str, ours: np.ndarray, theirs: np.ndarray, tolerance: float) -> Comparison:
    ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
    diff = np.abs(ours - theirs)
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = max(float(np.abs(theirs).max()) if theirs.size else 0.0, 1e-30)
    return Comparison(name, max_abs, max_abs / scale, tolerance)


def _check_processor_files(directory: Path) -> None:
    if not any((directory / name).is_file() for name in ("tokenizer.json", "vocab.json", "tokenizer.model")):
        raise PromptError(f"{directory} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt): parity "
                          "builds both sides' prompts from the checkpoint's own tokenizer and processor")
    if not (directory / "preprocessor_config.json").is_file():
        raise PromptError(f"{directory} has no preprocessor_config.json: transformers' processor cannot load")


def _processor_side(directory: Path, config, fmt: PromptFormat, clips, questions) -> dict:
    """The processor's inputs as transformers' model takes them: features cut to the encoder's window
    (the processor pads to its own 30 s chunk; a shorter window's frames past it are padding)."""
    theirs = processor_inputs(directory, fmt, clips, questions)
    window = config.audio.max_mel_frames
    mask = theirs["feature_attention_mask"][:, :window].astype(np.int64)
    return dict(input_ids=theirs["input_ids"].astype(np.int64), attention_mask=theirs["attention_mask"].astype(np.int64),
                features=theirs["input_features"][..., :window].astype(np.float32), feature_mask=mask,
                mel_lengths=mask.sum(-1))


def run_parity(directory: str | Path, clips: Sequence[np.ndarray] | None = None,
               questions: Sequence[str] | None = None, max_new_tokens: int = 8,
               tolerance: float = FLOAT32_TOLERANCE, *, param_dtype: str = "float32",
               dtype: str = "float32", prompt_format: str = DEFAULT_PROMPT_FORMAT) -> ParityReport:
    """Runs both frameworks (transformers in float32 at highest matmul precision, the Flax side in
    `param_dtype` weights and `dtype` compute) and compares them.

    The two sides build their inputs independently: transformers' from `Qwen2AudioProcessor` of the
    directory, the Flax side's from `prompts.build_prompts`. The prompt ids are compared first; when they
    differ the report holds that one failed comparison, naming the first differing position.
    """
    import torch
    from transformers import Qwen2AudioForConditionalGeneration as HFModel

    directory = Path(directory)
    fmt = load_prompt_format(directory, prompt_format)
    _check_processor_files(directory)
    loaded = checkpoints.load_hf_directory(directory, param_dtype=param_dtype, dtype=dtype)
    config = loaded.config
    window = config.audio.max_mel_frames * HOP_LENGTH
    clips = list(clips) if clips is not None else synthetic_clips(window)
    questions = list(questions) if questions else ["What is in the audio?"] * len(clips)
    if len(questions) == 1:
        questions = questions * len(clips)
    if len(questions) != len(clips):
        raise ValueError(f"{len(questions)} questions for {len(clips)} clips; give one, or one per clip")
    for i, clip in enumerate(clips):
        if len(clip) > window:
            raise ValueError(f"clip {i} has {len(clip)} samples, more than this model's encoder window of {window} "
                             f"({config.audio.max_mel_frames} mel frames)")
    x = build_inputs(directory, config, clips, questions, fmt)
    theirs = _processor_side(directory, config, fmt, clips, questions)
    mismatch = first_difference(x["input_ids"], x["attention_mask"], theirs["input_ids"], theirs["attention_mask"])
    if mismatch is not None:
        failed = Comparison("prompt ids", 1.0, 1.0, 0.0)
        return ParityReport([failed], dict(input_ids=x["input_ids"], processor_input_ids=theirs["input_ids"]),
                            f"prompt ids differ ({fmt.source}): {mismatch}")
    hf = HFModel.from_pretrained(str(directory), attn_implementation="eager", dtype=torch.float32).eval()
    settings = GenerationSettings.from_hf(loaded.generation_config, config, max_new_tokens=max_new_tokens)

    with torch.no_grad():
        tensors = dict(input_ids=torch.tensor(theirs["input_ids"]), attention_mask=torch.tensor(theirs["attention_mask"]),
                       input_features=torch.tensor(theirs["features"]),
                       feature_attention_mask=torch.tensor(theirs["feature_mask"]))
        out = hf(**tensors, output_attentions=True)
        hf_audio = _hf_audio_embeddings(hf, theirs)
        hf_tokens = hf.generate(
            **tensors, do_sample=False, max_new_tokens=max_new_tokens,
            eos_token_id=list(settings.eos_token_ids) or None, pad_token_id=settings.pad_token_id,
            suppress_tokens=list(settings.suppress_tokens),
            repetition_penalty=settings.repetition_penalty)[:, theirs["input_ids"].shape[1]:].numpy()

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
        Comparison("prompt ids", 0.0, 0.0, 0.0),
        compare("log-mel features", x["features"], theirs["features"], FEATURE_TOLERANCE),
        compare("audio_embeddings", audio[audio_valid], hf_audio[:, : audio.shape[1]][audio_valid], tolerance),
        compare("logits", logits[valid], out.logits.numpy()[valid], tolerance),
    ]
    pair = valid[:, None, :, None] & valid[:, None, None, :]
    for i, ref in enumerate(out.attentions):
        comparisons.append(compare(f"attention layer {i}", np.where(pair, attentions[i], 0),
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
