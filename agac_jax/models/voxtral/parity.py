"""The cross-framework check for Voxtral: transformers (eager attention, float32) and the Flax port.

`run_parity(directory)` builds one left-padded batch (a prompt per clip, the model card's audio + question
turn) twice: the transformers side with transformers' own `VoxtralProcessor.from_pretrained(directory)`
(`apply_chat_template`, i.e. mistral-common over the directory's tekken.json and `WhisperFeatureExtractor`),
the Flax side with `voxtral.prompts`. It compares the prompt ids first (stopping at the first differing
position), then reports, per quantity, the max absolute and max relative difference (relative to the
largest magnitude of the transformers value): log-mel features (every 30 s window), projected audio
embeddings (every audio token), logits, every decoder layer's attention, and the greedy tokens. Padding
positions are left out. The report's `Comparison`/`ParityReport` are Qwen2-Audio's.

`random_init_directory(config_json, seed)` writes a random transformers model of a config.json's shapes in
the released layout: config.json, transformers 4 key names in two safetensors shards with their index,
generation_config.json, tekken.json (a small tekken tokenizer with Voxtral's special tokens,
`voxtral.tokenizer`) and preprocessor_config.json. No download.
"""

from __future__ import annotations

import base64
import functools
import io
import json
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
import numpy as np

from agac_jax.audio.grids import SAMPLE_RATE
from agac_jax.models.generate import GenerationSettings, greedy_generate
from agac_jax.models.interface import PROBS, stack_sown
from agac_jax.models.qwen2_audio.parity import Comparison, ParityReport, compare, first_difference
from agac_jax.models.voxtral import checkpoints
from agac_jax.models.voxtral.model import VoxtralForConditionalGeneration
from agac_jax.models.voxtral.prompts import PromptError, build_prompts, conversation, load_tokenizer, processor_layout
from agac_jax.models.voxtral.tokenizer import AUDIO, SPECIAL_TOKENS, save_processor_files

FLOAT32_TOLERANCE = 1e-4
# Log-mel features against the processor's (WhisperFeatureExtractor's float32 torch STFT against the
# float64 numpy one of `audio.features`), as for Qwen2-Audio.
FEATURE_TOLERANCE = 1e-4
# The random model's tokenizer words: the default question's and a few answers.
PARITY_WORDS = ("What", "is", "in", "the", "audio", "?", "Is", "there", "a", "dog", "yes", "no", "Yes", "No",
                "Describe", "sound", ".")
AUDIO_TOKEN_ID = next(rank for rank, token in SPECIAL_TOKENS.items() if token == AUDIO)
# generation_config.json of the release: Mistral's <s>, </s> and <pad>.
GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 11}


def synthetic_clips(long_seconds: float = 7.5) -> list[np.ndarray]:
    """Two clips of different lengths: a 3 s tone in noise and a rising chirp of `long_seconds` (over 30 s
    it spans two encoder windows)."""
    rng = np.random.default_rng(0)
    t1 = np.arange(48_000) / SAMPLE_RATE
    t2 = np.arange(int(long_seconds * SAMPLE_RATE)) / SAMPLE_RATE
    tone = 0.3 * np.sin(2 * np.pi * 660 * t1) + 0.02 * rng.standard_normal(t1.size)
    chirp = 0.3 * np.sin(2 * np.pi * (200 * t2 + 60 * t2**2 / max(1.0, long_seconds / 7.5)))
    return [tone.astype(np.float32), chirp.astype(np.float32)]


def random_init_directory(config_json: str | Path, seed: int = 0, directory: str | Path | None = None) -> Path:
    """A random transformers Voxtral of a config.json's shapes in the released layout (module docstring),
    in `directory` or a new temporary one. The text vocabulary becomes at least the tokenizer's and
    `audio_token_id` the tokenizer's `[AUDIO]` (24, as released)."""
    import torch
    from safetensors.numpy import save_file
    from transformers import VoxtralConfig as HFConfig, VoxtralForConditionalGeneration as HFModel

    with open(config_json, encoding="utf-8") as f:
        fields = {k: v for k, v in json.load(f).items() if k != "model_type"}
    directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="agac_voxtral_"))
    directory.mkdir(parents=True, exist_ok=True)
    n_mels = (fields.get("audio_config") or {}).get("num_mel_bins", 128)
    vocab = save_processor_files(directory, PARITY_WORDS, num_mel_bins=n_mels)
    text = dict(fields.get("text_config") or {})
    text["vocab_size"] = max(int(text.get("vocab_size", 0)), vocab)
    fields.update(text_config=text, audio_token_id=AUDIO_TOKEN_ID)
    torch.manual_seed(seed)
    model = HFModel(HFConfig(**fields))
    config = model.config.to_dict()
    config.pop("transformers_version", None)
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    (directory / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG, indent=2))
    state = {checkpoints.legacy_key(k): v.detach().float().numpy() for k, v in model.state_dict().items()}
    keys = sorted(state)
    half = len(keys) // 2
    weight_map = {}
    for k, part in enumerate((keys[:half], keys[half:])):
        name = f"model-{k + 1:05d}-of-00002.safetensors"
        save_file({key: np.ascontiguousarray(state[key]) for key in part}, str(directory / name),
                  metadata={"format": "pt"})
        weight_map.update({key: name for key in part})
    index = {"metadata": {"total_size": int(sum(v.nbytes for v in state.values()))}, "weight_map": weight_map}
    (directory / checkpoints.INDEX_FILE).write_text(json.dumps(index, indent=2))
    return directory


def _wav_base64(clip: np.ndarray) -> str:
    """A clip as a base64 float32 WAV file (decoded by mistral-common to the same float32 samples)."""
    import soundfile as sf

    buffer = io.BytesIO()
    sf.write(buffer, np.asarray(clip, np.float32), SAMPLE_RATE, format="WAV", subtype="FLOAT")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def processor_inputs(directory: Path, clips: Sequence[np.ndarray], questions: Sequence[str]) -> dict:
    """transformers' own inputs: `VoxtralProcessor.from_pretrained(directory).apply_chat_template` on the model
    card's conversations (a clip and a question each), batched (left padding, the backend's)."""
    from transformers import VoxtralProcessor

    processor = VoxtralProcessor.from_pretrained(str(directory))
    conversations = [conversation(q, [{"type": "audio", "base64": _wav_base64(c)}]) for q, c in zip(questions, clips)]
    out = processor.apply_chat_template(conversations)
    return {k: v.numpy() for k, v in out.items()}


def _check_processor_files(directory: Path) -> None:
    if not (directory / "tekken.json").is_file():
        raise PromptError(f"{directory} has no tekken.json: parity builds both sides' prompts from the "
                          "checkpoint's own tokenizer and processor")
    if not (directory / "preprocessor_config.json").is_file():
        raise PromptError(f"{directory} has no preprocessor_config.json: transformers' processor cannot load")


def run_parity(directory: str | Path, clips: Sequence[np.ndarray] | None = None,
               questions: Sequence[str] | None = None, max_new_tokens: int = 8,
               tolerance: float = FLOAT32_TOLERANCE, *, dtype: str = "float32", param_dtype: str = "float32",
               prompt_format: str = "chat") -> ParityReport:
    """Runs both frameworks (transformers in float32 eager, the Flax side at highest matmul precision in
    `dtype` compute) on the directory and compares them (module docstring). The report's arrays hold the
    Flax side's inputs and outputs and transformers' (`hf_*`)."""
    if param_dtype != "float32" or prompt_format != "chat":
        raise ValueError("Voxtral's parity runs float32 weights with its own chat prompt")
    import torch
    from transformers import VoxtralForConditionalGeneration as HFModel

    directory = Path(directory)
    _check_processor_files(directory)
    loaded = checkpoints.load_hf_directory(directory, dtype=dtype)
    config = loaded.config
    clips = [np.asarray(c, np.float32) for c in (clips if clips is not None else synthetic_clips())]
    questions = list(questions) if questions else ["What is in the audio?"] * len(clips)
    if len(questions) == 1:
        questions = questions * len(clips)
    if len(questions) != len(clips):
        raise ValueError(f"{len(questions)} questions for {len(clips)} clips; give one, or one per clip")

    tokenizer = load_tokenizer(directory)
    x = build_prompts(tokenizer, questions, clips, num_mel_bins=config.audio.num_mel_bins,
                      window_frames=config.window_frames)
    theirs = processor_inputs(directory, clips, questions)
    mismatch = first_difference(x.input_ids, x.attention_mask, theirs["input_ids"], theirs["attention_mask"])
    if mismatch is not None:
        return ParityReport([Comparison("prompt ids", 1.0, 1.0, 0.0)],
                            dict(input_ids=x.input_ids, processor_input_ids=theirs["input_ids"]),
                            f"prompt ids differ ({tokenizer.path}): {mismatch}")

    hf = HFModel.from_pretrained(str(directory), attn_implementation="eager", dtype=torch.float32).eval()
    settings = GenerationSettings.from_hf(loaded.generation_config, config, max_new_tokens=max_new_tokens)
    with torch.no_grad():
        tensors = {name: torch.tensor(theirs[name]) for name in ("input_ids", "attention_mask", "input_features")}
        out = hf(**tensors, output_attentions=True)
        hf_audio = hf.get_audio_features(tensors["input_features"]).pooler_output.numpy()
        hf_tokens = hf.generate(
            **tensors, do_sample=False, max_new_tokens=max_new_tokens,
            eos_token_id=list(settings.eos_token_ids) or None, pad_token_id=settings.pad_token_id,
            suppress_tokens=list(settings.suppress_tokens),
            repetition_penalty=settings.repetition_penalty)[:, theirs["input_ids"].shape[1]:].numpy()

    model = VoxtralForConditionalGeneration(config)
    with jax.default_matmul_precision("highest"):
        forward = jax.jit(lambda p, *a: model.apply({"params": p}, *a, mutable=["attention"]))
        logits, state = forward(loaded.params, x.input_ids, x.attention_mask, x.input_features, x.mel_lengths)
        audio, n_tokens = jax.jit(lambda p, *a: model.apply({"params": p}, *a, method=model.encode_audio))(
            loaded.params, x.input_features, x.mel_lengths)
        generate = jax.jit(functools.partial(greedy_generate, model, settings=settings))
        tokens, _ = generate(loaded.params, x.input_ids, x.attention_mask, x.input_features, x.mel_lengths)
    attentions = np.asarray(stack_sown(state, PROBS, config.text.num_hidden_layers))
    logits, audio, tokens = np.asarray(logits, np.float32), np.asarray(audio, np.float32), np.asarray(tokens)
    n_tokens = np.asarray(n_tokens)
    # The clips' tokens in clip order: transformers' get_audio_features rows.
    ours_audio = np.concatenate([audio[i, : n_tokens[i]] for i in range(len(clips))])

    valid = x.attention_mask.astype(bool)
    comparisons = [
        Comparison("prompt ids", 0.0, 0.0, 0.0),
        compare("log-mel features", processor_layout(x, config.window_frames), theirs["input_features"],
                FEATURE_TOLERANCE),
        Comparison("audio tokens (count)", float(abs(len(ours_audio) - len(hf_audio))),
                   float(abs(len(ours_audio) - len(hf_audio))), 0.0),
    ]
    if len(ours_audio) == len(hf_audio):
        comparisons.append(compare("audio_embeddings", ours_audio, hf_audio, tolerance))
    comparisons.append(compare("logits", logits[valid], out.logits.numpy()[valid], tolerance))
    pair = valid[:, None, :, None] & valid[:, None, None, :]
    for i, ref in enumerate(out.attentions):
        comparisons.append(compare(f"attention layer {i}", np.where(pair, attentions[i], 0),
                                   np.where(pair, ref.numpy(), 0), tolerance))
    n = hf_tokens.shape[1]
    mismatched = int(np.sum(tokens[:, :n] != hf_tokens)) + int(np.sum(tokens[:, n:] != settings.pad_token_id))
    comparisons.append(Comparison("greedy tokens (count)", float(mismatched), float(mismatched), 0.0))
    arrays: dict[str, Any] = dict(audio_embeddings=audio, logits=logits, attentions=attentions, greedy_tokens=tokens,
                                  input_ids=x.input_ids, attention_mask=x.attention_mask,
                                  input_features=x.input_features, mel_lengths=x.mel_lengths,
                                  hf_logits=out.logits.numpy(), hf_audio_embeddings=hf_audio,
                                  hf_attentions=np.stack([a.numpy() for a in out.attentions]),
                                  hf_greedy_tokens=hf_tokens)
    return ParityReport(comparisons, arrays)
