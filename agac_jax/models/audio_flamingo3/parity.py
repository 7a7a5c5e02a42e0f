"""The cross-framework check for Audio Flamingo 3: transformers (eager attention) and the Flax port.

`run_parity` builds one left-padded batch (one prompt per clip) twice: transformers' side with
`AudioFlamingo3Processor.from_pretrained(directory).apply_chat_template` on the model card's
conversation, the Flax side with `prompts.build_prompts` from the directory's tokenizer and processor
files. It compares the prompt ids first (stopping at the first differing position), then, as
`qwen2_audio.parity` (whose `Comparison`, `ParityReport`, `first_difference` it reuses): the log-mel
features of every window, the projected audio embeddings (the valid tokens of all windows, in the
order the model scatters them), the logits at every non-padding position (computed and compared in
blocks of rows, so a 152k vocabulary never needs a [B, S, vocab] array), every decoder layer's
attention, and the greedy tokens. Max abs and max relative differences; float32 at 1e-4.

`random_init_directory` writes a random tiny model in the released layout: the conversion script's
(`convert_audioflamingo3_to_hf.py`) processor save (tokenizer, `processor_config.json` with the
Whisper feature extractor, the processor's `chat_template.jinja`), `config.json`, sharded safetensors
with their index, and `generation_config.json`; the tokenizer is the real Qwen2 BPE (`vocab.json`,
`merges.txt` from the shared fixture) with Qwen2.5's added tokens and AF3's seven (`<sound>` = 151669).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from agac_jax.models.audio_flamingo3 import checkpoints
from agac_jax.models.audio_flamingo3.config import AudioFlamingo3Config
from agac_jax.models.audio_flamingo3.model import AudioFlamingo3ForConditionalGeneration
from agac_jax.models.audio_flamingo3.prompts import PromptBatch, build_prompts, load_processor_settings
from agac_jax.models.generate import GenerationSettings, greedy_generate_from_embeddings
from agac_jax.models.interface import PROBS, stack_sown
from agac_jax.models.qwen2_audio.model import causal_mask
from agac_jax.models.qwen2_audio.parity import Comparison, ParityReport, compare, first_difference
from agac_jax.models.qwen2_audio.prompts import PromptError

FLOAT32_TOLERANCE = 1e-4
FEATURE_TOLERANCE = 1e-4  # WhisperFeatureExtractor's float32 torch STFT vs the port's float64 (qwen2_audio.parity)
LOGIT_ROWS = 256  # rows of logits computed at once on each side
QWEN2_TOKENIZER_FIXTURE = Path(__file__).resolve().parents[4] / "shared" / "fixtures" / "qwen2_tokenizer"

# Qwen2.5's added tokens from 151643, then the seven Audio Flamingo 3 adds (151665-151671). `<sound>` at
# 151669 and 151672 tokens in all are the release's (config default `audio_token_id`, the conversion
# script's vocab_size = len(tokenizer)); the order of the other AF3 tokens is not taken from the
# released files and does not change any prompt.
QWEN25_ADDED = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>",
                "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
QWEN25_NOT_SPECIAL = ("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
                      "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")
AF3_ADDED = ("[BOS]", "[PAD]", "<vila/sentinel>", "<speech>", "<sound>", "<image>", "<vila/video>")
FIRST_ADDED_ID = 151643

# The conversion script's templates: the tokenizer's (text only), and the processor's, which the
# processor save writes to chat_template.jinja.
TOKENIZER_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{% for message in messages if message['content'] is not none %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "{{ '<|im_start|>assistant\\n' }}"
    "{% endif %}"
)
PROCESSOR_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "{% for m in messages if m['content'] is not none %}"
    "<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}"
    "{{ m['content'] }}"
    "{% else %}"
    "{% set audio = namespace(found=False) %}"
    "{% set text_buf = namespace(v='') %}"
    "{% for c in m['content'] %}"
    "{% if c.get('type') == 'audio' or 'audio' in c %}"
    "{% set audio.found = True %}"
    "{% elif c.get('type') == 'text' or 'text' in c %}"
    "{% set text_buf.v = text_buf.v + c['text'] %}"
    "{% endif %}"
    "{% endfor %}"
    "{% if audio.found %}{{ '<sound>' }}{% endif %}{{ text_buf.v }}"
    "{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)


def synthetic_clips(seconds: Sequence[float] = (1.2, 11.3)) -> list[np.ndarray]:
    """Clips of the given lengths at 16 kHz: a tone in noise, then rising chirps."""
    rng = np.random.default_rng(0)
    clips = []
    for k, s in enumerate(seconds):
        t = np.arange(int(round(s * 16_000))) / 16_000
        if k == 0:
            clip = 0.3 * np.sin(2 * np.pi * 660 * t) + 0.02 * rng.standard_normal(t.size)
        else:
            clip = 0.3 * np.sin(2 * np.pi * ((150 + 50 * k) * t + 40 * t**2 / (1 + s / 10)))
        clips.append(clip.astype(np.float32))
    return clips


def write_tokenizer_files(directory: Path, fixture: Path = QWEN2_TOKENIZER_FIXTURE) -> Path:
    """The original checkpoint's `llm/` tokenizer: real Qwen2 BPE files, Qwen2.5's and AF3's added tokens,
    `<|im_end|>` as EOS and `<|endoftext|>` as pad; the conversion script loads it from here."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copyfile(fixture / name, directory / name)
    added = {}
    for i, token in enumerate(QWEN25_ADDED + AF3_ADDED):
        added[str(FIRST_ADDED_ID + i)] = {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": token not in QWEN25_NOT_SPECIAL}
    config = {"add_prefix_space": False, "added_tokens_decoder": added, "bos_token": None,
              "clean_up_tokenization_spaces": False, "eos_token": "<|im_end|>", "errors": "replace",
              "model_max_length": 131072, "pad_token": "<|endoftext|>", "split_special_tokens": False,
              "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return directory


def random_init_directory(config_json: str | Path, seed: int = 0, out: str | Path | None = None,
                          max_shard_size: str = "20MB") -> Path:
    """A random transformers AF3 of a `config.json`'s shapes, in the released layout (module docstring).
    The config's vocabulary becomes at least the tokenizer's and its `audio_token_id`, bos/eos/pad ids
    the tokenizer's, as the conversion script sets them. Returns the directory (`out`, or a new
    temporary one)."""
    import torch
    from transformers import (AudioFlamingo3Config, AudioFlamingo3ForConditionalGeneration as HFModel,
                              AudioFlamingo3Processor, AutoTokenizer, GenerationConfig, WhisperFeatureExtractor)

    with open(config_json) as f:
        fields = {k: v for k, v in json.load(f).items() if k != "model_type"}
    directory = Path(out) if out is not None else Path(tempfile.mkdtemp(prefix="agac_af3_parity_"))
    directory.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as llm:
        write_tokenizer_files(Path(llm))
        tokenizer = AutoTokenizer.from_pretrained(llm, chat_template=TOKENIZER_CHAT_TEMPLATE, use_fast=True)
        n_mels = fields.get("audio_config", {}).get("num_mel_bins", 128)
        processor = AudioFlamingo3Processor(
            feature_extractor=WhisperFeatureExtractor(feature_size=n_mels, return_attention_mask=True),
            tokenizer=tokenizer, chat_template=PROCESSOR_CHAT_TEMPLATE)
        processor.save_pretrained(str(directory))
    text = dict(fields.get("text_config", {}))
    text.update(vocab_size=max(int(text.get("vocab_size", 0)), len(tokenizer)), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    fields.update(text_config=text, audio_token_id=tokenizer.convert_tokens_to_ids("<sound>"))
    torch.manual_seed(seed)
    model = HFModel(AudioFlamingo3Config(**fields))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id, max_new_tokens=2048)
    model.save_pretrained(str(directory), max_shard_size=max_shard_size)
    return directory


def processor_inputs(directory: Path, clips: Sequence[np.ndarray], questions: Sequence[str]) -> dict[str, np.ndarray]:
    """transformers' own inputs: `AudioFlamingo3Processor.from_pretrained(directory).apply_chat_template`
    on the model card's conversation, one per clip (the processor's default left padding)."""
    from transformers import AudioFlamingo3Processor

    processor = AudioFlamingo3Processor.from_pretrained(str(directory))
    conversations = [[{"role": "user", "content": [{"type": "text", "text": q},
                                                   {"type": "audio", "audio": np.asarray(c, np.float32)}]}]
                     for q, c in zip(questions, clips)]
    out = processor.apply_chat_template(conversations, tokenize=True, add_generation_prompt=True, return_dict=True,
                                        sanitize_control_tokens=True)
    return {k: np.asarray(v) for k, v in out.items()}


def _check_processor_files(directory: Path) -> None:
    if not any((directory / name).is_file() for name in ("tokenizer.json", "vocab.json")):
        raise PromptError(f"{directory} has no tokenizer files (tokenizer.json, or vocab.json + merges.txt): parity "
                          "builds both sides' prompts from the checkpoint's own tokenizer and processor")


def _logits_comparison(name: str, ours_hidden: np.ndarray, theirs_hidden: Any, our_head: Any, their_head: Any,
                       tolerance: float) -> Comparison:
    """Logits of the rows [N, D] on both sides, LOGIT_ROWS at a time (our rows padded to a whole block,
    so the head compiles once)."""
    import torch

    n = ours_hidden.shape[0]
    padded = np.zeros((-(-n // LOGIT_ROWS) * LOGIT_ROWS, ours_hidden.shape[1]), ours_hidden.dtype)
    padded[:n] = ours_hidden
    max_abs, scale = 0.0, 0.0
    for start in range(0, n, LOGIT_ROWS):
        rows = min(LOGIT_ROWS, n - start)
        ours = np.asarray(our_head(padded[start:start + LOGIT_ROWS]))[:rows]
        with torch.no_grad():
            theirs = their_head(theirs_hidden[start:start + rows]).numpy()
        max_abs = max(max_abs, float(np.abs(ours - theirs).max()))
        scale = max(scale, float(np.abs(theirs).max()))
    return Comparison(name, max_abs, max_abs / max(scale, 1e-30), tolerance)


@functools.lru_cache(maxsize=8)
def _jitted(config, settings: GenerationSettings | None = None):
    """Jitted stages of one config: (encode_audio, prompt embeddings -> (embeddings, hidden, attention),
    LM head, greedy generation from embeddings)."""
    model = AudioFlamingo3ForConditionalGeneration(config)

    def hidden(params, ids, mask, audio, n_tokens):
        v = {"params": params}
        embeds = model.apply(v, ids, audio, n_tokens, method=model.embed_prompt)
        positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
        (h, _), state = model.apply(v, embeds, positions=positions, mask=causal_mask(mask), method=model.decode,
                                    mutable=[PROBS[0]])
        return embeds, h, stack_sown(state, PROBS, config.text.num_hidden_layers)

    encode = jax.jit(lambda p, f, m: model.apply({"params": p}, f, m, method=model.encode_audio))
    head = jax.jit(lambda p, h: model.apply({"params": p}, h, method=model.logits))
    # Generation from the prompt embeddings `hidden` made (`greedy_generate` is encode_audio, embed_prompt,
    # then this): the encoder is compiled once.
    generate = None if settings is None else jax.jit(
        functools.partial(greedy_generate_from_embeddings, model, settings=settings))
    return encode, jax.jit(hidden), head, generate


@dataclasses.dataclass
class TransformersSide:
    """transformers' inputs (the processor's) and outputs (eager, float32) for one batch; `run_parity`
    computes it, or takes one computed before (`reference=`) for the same directory, clips, questions
    and number of new tokens, e.g. to run the Flax side again with other parameters."""

    directory: Path
    questions: tuple[str, ...]
    clip_lengths: tuple[int, ...]
    max_new_tokens: int
    inputs: dict[str, np.ndarray]  # input_ids, attention_mask, input_features, input_features_mask
    audio: np.ndarray  # [valid tokens of all windows, D], in scatter order (`get_audio_features`' pooler_output)
    hidden: Any  # torch [B, S, D], the decoder's last hidden state
    attentions: list[np.ndarray]  # per decoder layer [B, H, S, S]
    lm_head: Any  # the torch LM head
    greedy_tokens: np.ndarray  # [B, <= max_new_tokens]


@dataclasses.dataclass
class AudioFlamingo3ParityReport(ParityReport):
    """`qwen2_audio.parity.ParityReport` with transformers' side kept, to run the Flax side again."""

    reference: TransformersSide | None = None


def _generation_settings(directory: Path, config: AudioFlamingo3Config, max_new_tokens: int) -> GenerationSettings:
    path = directory / "generation_config.json"
    return GenerationSettings.from_hf(json.loads(path.read_text()) if path.is_file() else {}, config,
                                      max_new_tokens=max_new_tokens)


def transformers_side(directory: str | Path, clips: Sequence[np.ndarray], questions: Sequence[str],
                      max_new_tokens: int = 4) -> TransformersSide:
    """The processor's batch, transformers' forward (eager, float32, attentions) and greedy generation
    (the port's generation settings: `generation_config.json`, the audio token suppressed)."""
    import torch
    from transformers import AudioFlamingo3ForConditionalGeneration as HFModel

    directory = Path(directory)
    config = checkpoints.read_model_config(directory / "config.json")
    gen = _generation_settings(directory, config, max_new_tokens)
    inputs = processor_inputs(directory, clips, questions)
    hf = HFModel.from_pretrained(str(directory), attn_implementation="eager", dtype=torch.float32).eval()
    t = {k: torch.tensor(inputs[k]) for k in ("input_ids", "attention_mask", "input_features", "input_features_mask")}
    with torch.no_grad():
        out = hf.model(**t, output_attentions=True)  # audio_hidden_states: get_audio_features' valid rows
        tokens = hf.generate(**t, do_sample=False, max_new_tokens=max_new_tokens,
                             eos_token_id=list(gen.eos_token_ids) or None, pad_token_id=gen.pad_token_id,
                             suppress_tokens=list(gen.suppress_tokens), repetition_penalty=gen.repetition_penalty)
    return TransformersSide(directory, tuple(questions), tuple(int(np.asarray(c).size) for c in clips), max_new_tokens,
                            inputs, out.audio_hidden_states.numpy(), out.last_hidden_state,
                            [a.numpy() for a in out.attentions], hf.lm_head,
                            tokens[:, inputs["input_ids"].shape[1]:].numpy())


def run_parity(directory: str | Path, clips: Sequence[np.ndarray] | None = None,
               questions: Sequence[str] | None = None, max_new_tokens: int = 4,
               tolerance: float = FLOAT32_TOLERANCE, *, param_dtype: str = "float32",
               dtype: str = "float32", reference: TransformersSide | None = None,
               prompt_format: str = "chat") -> AudioFlamingo3ParityReport:
    """Runs transformers (float32, eager) and the Flax port (`param_dtype` weights, `dtype` compute) on the
    same directory and compares them (module docstring). Default clips: 1.2 s and 11.3 s; a clip longer
    than 30 s is cut into windows on both sides. `reference`: transformers' side computed before
    (`transformers_side`) for the same arguments. The report's arrays hold the Flax side, the
    processor's window count (`processor_windows`); its `reference` is the transformers side."""
    if prompt_format != "chat":
        raise ValueError("Audio Flamingo 3 has its processor's chat prompt only")
    import torch
    from transformers import AutoTokenizer

    directory = Path(directory)
    _check_processor_files(directory)
    settings = load_processor_settings(directory)
    loaded = checkpoints.load_hf_directory(directory, param_dtype=param_dtype, dtype=dtype)
    config, params = loaded.config, loaded.params
    if settings.feature_size != config.audio.num_mel_bins:
        raise PromptError(f"{directory}: the feature extractor gives {settings.feature_size} mel bins, the encoder "
                          f"takes {config.audio.num_mel_bins}")
    if settings.window_frames != config.window_frames:
        raise PromptError(f"{directory}: the processor's {settings.chunk_length} s windows are "
                          f"{settings.window_frames} frames; the encoder's window is {config.window_frames}")
    clips = list(clips) if clips is not None else synthetic_clips()
    questions = list(questions) if questions else ["What is in the audio?"] * len(clips)
    if len(questions) == 1:
        questions = questions * len(clips)
    if len(questions) != len(clips):
        raise ValueError(f"{len(questions)} questions for {len(clips)} clips; give one, or one per clip")
    if reference is not None and (reference.directory != directory or reference.questions != tuple(questions)
                                  or reference.clip_lengths != tuple(int(np.asarray(c).size) for c in clips)
                                  or reference.max_new_tokens != max_new_tokens):
        raise ValueError("reference= was computed for another directory, other clips, questions or max_new_tokens")

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    x: PromptBatch = build_prompts(tokenizer, settings, questions, clips)
    theirs = reference.inputs if reference is not None else processor_inputs(directory, clips, questions)
    mismatch = first_difference(x.input_ids, x.attention_mask, theirs["input_ids"], theirs["attention_mask"])
    if mismatch is not None:
        return AudioFlamingo3ParityReport([Comparison("prompt ids", 1.0, 1.0, 0.0)],
                            dict(input_ids=x.input_ids, processor_input_ids=theirs["input_ids"]),
                            f"prompt ids differ ({settings.template_source}): {mismatch}")
    our_windows, our_window_mask = x.processor_windows()
    comparisons = [Comparison("prompt ids", 0.0, 0.0, 0.0)]
    if our_windows.shape != theirs["input_features"].shape or not np.array_equal(
            our_window_mask, theirs["input_features_mask"]):
        comparisons.append(Comparison("feature windows/mask", 1.0, 1.0, 0.0))
        return AudioFlamingo3ParityReport(
            comparisons, dict(input_ids=x.input_ids), f"windows differ: {our_windows.shape} (agac_jax) vs "
            f"{theirs['input_features'].shape} (transformers' processor), or their masks")
    comparisons.append(compare("log-mel features", our_windows, theirs["input_features"], FEATURE_TOLERANCE))

    gen = _generation_settings(directory, config, max_new_tokens)
    encode, hidden_fn, head, generate = _jitted(config, gen)
    with jax.default_matmul_precision("highest"):
        audio, n_tokens = encode(params, x.input_features, x.mel_lengths)
        embeds, hidden, attentions = hidden_fn(params, x.input_ids, x.attention_mask, audio, n_tokens)
        tokens, _ = generate(params, embeds, x.input_ids, x.attention_mask)
    audio, hidden, attentions = np.asarray(audio), np.asarray(hidden), np.asarray(attentions)
    n_tokens, tokens = np.asarray(n_tokens), np.asarray(tokens)
    ref = reference if reference is not None else transformers_side(directory, clips, questions, max_new_tokens)

    valid = x.attention_mask.astype(bool)
    audio_valid = np.arange(audio.shape[1])[None] < n_tokens[:, None]
    if not np.array_equal(n_tokens, x.num_audio_tokens):
        comparisons.append(Comparison("audio token counts", 1.0, 1.0, 0.0))
    comparisons.append(compare("audio_embeddings", audio[audio_valid], ref.audio, tolerance)
                       if audio[audio_valid].shape == ref.audio.shape
                       else Comparison("audio_embeddings (count)", 1.0, 1.0, 0.0))
    comparisons.append(_logits_comparison("logits", hidden[valid], ref.hidden[torch.tensor(valid)],
                                          lambda h: head(params, h), ref.lm_head, tolerance))
    pair = valid[:, None, :, None] & valid[:, None, None, :]
    for i, theirs_attention in enumerate(ref.attentions):
        comparisons.append(compare(f"attention layer {i}", np.where(pair, attentions[i], 0),
                                   np.where(pair, theirs_attention, 0), tolerance))
    n = ref.greedy_tokens.shape[1]
    mismatched = int(np.sum(tokens[:, :n] != ref.greedy_tokens))
    comparisons.append(Comparison("greedy tokens (count)", float(mismatched), float(mismatched), 0.0))
    arrays = dict(input_ids=x.input_ids, audio_embeddings=audio, num_audio_tokens=n_tokens, attentions=attentions,
                  greedy_tokens=tokens, processor_greedy_tokens=ref.greedy_tokens,
                  processor_windows=np.asarray(theirs["input_features"].shape[0]))
    return AudioFlamingo3ParityReport(comparisons, arrays, reference=ref)
