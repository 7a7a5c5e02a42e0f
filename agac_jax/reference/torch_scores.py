"""PyTorch reference of the scoring method (DESIGN.md sections 2 and 3) on transformers' audio-language models.

Runs on transformers' ``Qwen2AudioForConditionalGeneration``, ``AudioFlamingo3ForConditionalGeneration``
and ``VoxtralForConditionalGeneration`` (``FAMILIES``, told apart by ``config.model_type``) and imports
neither jax nor the JAX half of agac_jax, so that it can be benchmarked against the JAX program on equal
terms and used as an independent cross-check of it. Two modes (``MODES``):

- ``"eager"``: every pass with eager attention (the model must be loaded with
  ``attn_implementation="eager"``); the answer's log-odds at m = 1 takes a pass of its own.
- ``"strong"``: what a careful PyTorch user runs: SDPA (``torch.nn.functional.scaled_dot_product_attention``)
  on every pass that reads no attention map (encoder, answer, silence, occlusion and IG passes),
  eager attention only on the one pass at m = 1 that the global and FastV scores read, whose hidden
  states also give the answer's target at m = 1 (no extra pass); the model may be loaded with either.

Both run under ``torch.inference_mode`` except the IG backward passes, batch ``chunk`` gate vectors
or IG steps per pass, and apply the LM head to the answer-producing rows only; the thread count is
torch's (``torch.get_num_threads()``).

One clip at a time (``score_clips`` loops over clips):

1. Encoder, once for the audio and once for the silence (one batch of two): E_A, E_S [T, d], the
   projected audio embeddings of the clip's T audio placeholders, and which of them are gated (G of
   them, a prefix: the tokens that read the clip). This is the only family-specific step (``AudioFamily``):
   - Qwen2-Audio: one 30 s window, the encoder mask built exactly as ``Qwen2AudioModel.forward`` builds
     it; T = G valid tokens of 40 ms;
   - Audio Flamingo 3: the processor's 30 s windows (``input_features`` [W, n_mels, 3000] and
     ``input_features_mask``) through transformers' ``get_audio_features``, whose valid rows are the
     windows' valid tokens in order: one 40 ms grid over the clip, T = G;
   - Voxtral: the processor's whole 30 s windows through ``get_audio_features`` (no encoder mask: the
     window's padding is heard): T = 375 tokens of 80 ms per window, of which the first
     G = ceil(valid mel frames / 8) read the clip; the others keep the clip's embedding under every
     gate (never silence's), so a gate changes only the G tokens that hold audio.
2. Answer y: greedy ``model.generate`` under the audio, never the audio placeholder, cut before the
   first EOS of the generation config; or the given ``answer_ids``.
3. Teacher-forced passes over prompt + y (positions 0..S+n-1, no padding) with the gated audio
   placeholders replaced by E(m) = m * E_A + (1 - m) * E_S, m [G] (the others by E_A). The LM head runs
   only on the answer-producing rows S-1..S+n-2; logp(m) = sum_j log_softmax(logits[S-1+j])[y_j].
4. m = 1 with attentions: logp(1), the global score G and FastV. m = 0: logp(0).
5. Local score: occlusion (all G gate vectors, ``chunk`` per batch) or integrated gradients
   (midpoint rule, ``chunk`` steps per batch, one backward pass per batch).
6. Fusion F = alpha * norm(L) + (1 - alpha) * norm(G), in numpy.

Every score is over the G gated tokens; token t reads samples [t s, (t + 1) s) of the clip, s =
``ReferenceScores.token_samples`` (640, or Voxtral's 1280), and ``grid_frames`` / ``grid_keep`` map
scores on that grid to codec frames.

Fusion, frame mapping and keep selection (``fuse_scores``, ``token_scores_to_frames``,
``keep_count``, ``reference_keep``) are plain numpy in ``agac_jax.reference.selection``, written apart
from agac_jax.scoring.selection so that they check it, and re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch

from agac_jax.reference.selection import (CODEC_TOKEN_RATES, TOKEN_SAMPLES, frame_samples, fuse_scores,
                                          keep_count, local_evidence,
                                          minmax_normalize, reference_keep, token_scores_to_frames)

ENCODER_FRAMES = 3000
FASTV_LAYER = 2
ESTIMATORS = ("occlusion", "integrated_gradients")
MODES = ("eager", "strong")

TensorLike = np.ndarray | torch.Tensor | Sequence[int]


@dataclass(frozen=True)
class ReferenceScores:
    """Scores of one clip's G gated audio tokens (Qwen2-Audio, Audio Flamingo 3: its T valid tokens;
    Voxtral: the tokens that read the clip).

    Attributes:
        answer_ids: int64 [n], the answer y (no EOS, no padding).
        logp_full: logp(1), the answer's log-probability under the audio (its log-odds when the
            local score's target is "log_odds", as the program reports it).
        logp_silence: logp(0), under the silence (the same target).
        local: float64 [G], the local (AAD) score L of the chosen estimator.
        global_: float64 [G], the global attention score G.
        fastv: float64 [G], FastV's score (mean attention received at decoder layer K).
        fused: float64 [G], alpha * norm(L) + (1 - alpha) * norm(G).
        seconds: wall-clock seconds per stage: "encode", "answer", "attention", "silence",
            "local", "fusion" and "total".
        token_samples: 16 kHz samples each token reads (token t: [t s, (t + 1) s)): 640, Voxtral 1280.
    """

    answer_ids: np.ndarray
    logp_full: float
    logp_silence: float
    local: np.ndarray
    global_: np.ndarray
    fastv: np.ndarray
    fused: np.ndarray
    seconds: dict[str, float] = field(default_factory=dict)
    token_samples: int = TOKEN_SAMPLES

    @property
    def audio_evidence(self) -> float:
        """D = logp(1) - logp(0)."""
        return self.logp_full - self.logp_silence


@dataclass(frozen=True)
class ReferenceClip:
    """The inputs of one clip for :func:`score_clips`.

    Attributes:
        input_ids: int [S], the prompt with expanded audio placeholders, no padding.
        features: float [n_mels, 3000], the clip's log-mel features as the processor gives them
            (Audio Flamingo 3, Voxtral: its W 30 s windows, [W, n_mels, 3000] or side by side
            [n_mels, W x 3000]).
        feature_mask: int [3000], 1 on the clip's valid mel frames (windowed families: [W, 3000] or
            [W x 3000]).
        silence_features: float [n_mels, 3000], the log-mel of zeros of the clip's length (the same
            layout as features).
        answer_ids: int [n] or None (None: the model's greedy answer).
        clip_id: the name that error messages use.
    """

    input_ids: TensorLike
    features: TensorLike
    feature_mask: TensorLike
    silence_features: TensorLike
    answer_ids: TensorLike | None = None
    clip_id: str = "clip"


class _StageTimer:
    """Accumulates wall-clock seconds per named stage."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------


def _model_device_dtype(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    parameter = next(model.parameters())
    return parameter.device, parameter.dtype


def _check_model(model: torch.nn.Module, mode: str = "eager") -> None:
    audio_family(model)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if model.training:
        raise ValueError("model is in training mode (dropout on); call model.eval() before scoring")
    implementation = model.model.language_model.config._attn_implementation
    if mode == "eager" and implementation != "eager":
        raise ValueError(
            f"the language model uses attn_implementation={implementation!r}; the global and FastV scores "
            "need the attention probabilities: load the model with attn_implementation='eager'"
        )


@contextmanager
def attention_implementation(model: torch.nn.Module, implementation: str | None) -> Iterator[None]:
    """Runs the block with every sub-model of `model` (audio tower, language model) on `implementation`
    ("eager" or "sdpa"; None: unchanged), restoring each sub-model's own afterwards.

    transformers reads ``config._attn_implementation`` at every forward (attention function and mask),
    so the switch takes effect without reloading."""
    if implementation is None:
        yield
        return
    configs = [model.config] + [getattr(model.config, key) for key in model.config.sub_configs
                                if getattr(model.config, key, None) is not None]
    before = [config._attn_implementation_internal for config in configs]
    model.config._attn_implementation = implementation
    try:
        yield
    finally:
        for config, value in zip(configs, before):
            config._attn_implementation_internal = value


def _pass_implementations(mode: str) -> tuple[str | None, str | None]:
    """(the attention pass's implementation, every other pass's) for a mode; None keeps the model's."""
    return ("eager", "sdpa") if mode == "strong" else (None, None)


def _tensor(x: TensorLike, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A tensor of x; read-only arrays (e.g. from jax.device_get) are copied, never aliased."""
    if not isinstance(x, torch.Tensor):
        x = np.asarray(x)
        x = x if x.flags.writeable else x.copy()
    return torch.as_tensor(x).to(device=device, dtype=dtype)


def _vector(x: TensorLike, name: str, clip_id: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    tensor = _tensor(x, dtype, device)
    if tensor.ndim != 1:
        raise ValueError(f"{clip_id}: {name} must be 1-D, got shape {tuple(tensor.shape)}")
    return tensor


def _features(x: TensorLike, name: str, clip_id: str, n_mels: int, dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
    tensor = _tensor(x, dtype, device)
    if tensor.shape != (n_mels, ENCODER_FRAMES):
        raise ValueError(
            f"{clip_id}: {name} must have shape ({n_mels}, {ENCODER_FRAMES}) (the processor's 30 s padding), "
            f"got {tuple(tensor.shape)}"
        )
    return tensor


def encoder_output_lengths(n_mel_frames: int) -> tuple[int, int]:
    """(frames after the second conv, audio tokens) of a clip with n_mel_frames valid mel frames.

    The same arithmetic as ``Qwen2AudioEncoder._get_feat_extract_output_lengths``.
    """
    after_conv = (n_mel_frames - 1) // 2 + 1
    return after_conv, (after_conv - 2) // 2 + 1


def encode_audio(model: torch.nn.Module, features: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """Projected audio embeddings of clips that share one feature mask.

    Args:
        model: Qwen2AudioForConditionalGeneration.
        features: [B, n_mels, 3000].
        feature_mask: [3000], 1 on the valid mel frames (the same for every row).

    Returns:
        [B, T, d] embeddings of the T valid audio tokens.
    """
    from transformers.masking_utils import create_bidirectional_mask

    tower = model.model.audio_tower
    batch = features.shape[0]
    lengths, n_tokens = tower._get_feat_extract_output_lengths(feature_mask.sum().reshape(1).long())
    max_len = (features.shape[-1] - 2) // 2 + 1
    valid = (torch.arange(max_len, device=features.device)[None] < lengths[:, None]).long().expand(batch, -1)
    dummy = torch.zeros((batch, max_len, 1), dtype=features.dtype, device=features.device)
    mask = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=valid)
    hidden = tower(features, attention_mask=mask).last_hidden_state
    return model.model.multi_modal_projector(hidden)[:, : int(n_tokens[0])]


def encode_audio_flamingo3(model: torch.nn.Module, features: torch.Tensor, feature_mask: torch.Tensor) -> torch.Tensor:
    """Projected audio embeddings of clips that share one window layout, through transformers'
    ``AudioFlamingo3Model.get_audio_features`` (the encoder on each 30 s window, masked as the processor's
    ``input_features_mask``, the projector, the windows' valid rows in order).

    Args:
        model: AudioFlamingo3ForConditionalGeneration.
        features: [B, W, n_mels, 3000], each clip's windows.
        feature_mask: [W, 3000], 1 on each window's valid mel frames (the same for every clip).

    Returns:
        [B, T, d], T the windows' valid tokens: one 40 ms grid over the clip.
    """
    batch, windows = features.shape[:2]
    mask = feature_mask[None].expand(batch, -1, -1).reshape(batch * windows, -1)
    rows = model.model.get_audio_features(features.reshape(batch * windows, *features.shape[2:]), mask,
                                          return_dict=True).pooler_output
    return rows.reshape(batch, -1, rows.shape[-1])


def encode_voxtral(model: torch.nn.Module, features: torch.Tensor) -> torch.Tensor:
    """Projected audio embeddings of clips of W whole 30 s windows each, through transformers'
    ``VoxtralModel.get_audio_features`` (no encoder mask; 4 encoder frames stacked per token).

    Args:
        model: VoxtralForConditionalGeneration.
        features: [B, W, n_mels, 3000].

    Returns:
        [B, W x 375, d]: every placeholder of the clip, 80 ms each, the window's padding included.
    """
    batch, windows = features.shape[:2]
    rows = model.model.get_audio_features(features.reshape(batch * windows, *features.shape[2:]),
                                          return_dict=True).pooler_output
    return rows.reshape(batch, -1, rows.shape[-1])


# ----------------------------------------------------------------------------------------------
# Families: the clip's and silence's projected embeddings and the gated tokens
# ----------------------------------------------------------------------------------------------


class AudioFamily:
    """What a model family changes in the reference (everything else is shared): the layout of a clip's
    features, how the clip's and silence's projected audio embeddings are computed, which placeholders
    are gated, the audio keyword arguments of ``generate``, and the samples each token reads."""

    model_type = ""
    token_samples = TOKEN_SAMPLES

    def inputs(self, model: torch.nn.Module, features: TensorLike, feature_mask: TensorLike,
               silence_features: TensorLike, clip_id: str, dtype: torch.dtype,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(features, feature mask, silence features) as tensors of the family's layout, checked."""
        raise NotImplementedError

    def encode(self, model: torch.nn.Module, features: torch.Tensor, feature_mask: torch.Tensor,
               silence_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(E_A [T, d], E_S [T, d], gated [T] bool or None: every placeholder), one batch of two; the
        arguments as `inputs` returns them."""
        raise NotImplementedError

    def generate_inputs(self, features: torch.Tensor, feature_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The audio keyword arguments of ``model.generate`` for one clip."""
        raise NotImplementedError


class Qwen2AudioFamily(AudioFamily):
    """One 30 s window [n_mels, 3000] with its mask [3000]; every valid token is gated."""

    model_type = "qwen2_audio"

    def inputs(self, model, features, feature_mask, silence_features, clip_id, dtype, device):
        n_mels = model.config.audio_config.num_mel_bins
        mask = _vector(feature_mask, "feature_mask", clip_id, torch.long, device)
        if mask.shape[0] != ENCODER_FRAMES:
            raise ValueError(f"{clip_id}: feature_mask must have {ENCODER_FRAMES} frames, got {mask.shape[0]}")
        audio_features = _features(features, "features", clip_id, n_mels, dtype, device)
        silence_features = _features(silence_features, "silence_features", clip_id, n_mels, dtype, device)
        return audio_features, mask, silence_features

    def encode(self, model, features, feature_mask, silence_features):
        audio, silence = encode_audio(model, torch.stack([features, silence_features]), feature_mask)
        return audio, silence, None

    def generate_inputs(self, features, feature_mask):
        return dict(input_features=features[None], feature_attention_mask=feature_mask[None])


class WindowedFamily(AudioFamily):
    """Features of W 30 s windows, [W, n_mels, 3000] (the processor's ``input_features`` of one clip) or
    side by side [n_mels, W x 3000]; the mask [W, 3000] or [W x 3000], 1 on the clip's valid frames."""

    def inputs(self, model, features, feature_mask, silence_features, clip_id, dtype, device):
        n_mels = model.config.audio_config.num_mel_bins
        audio_features = _windows(features, "features", clip_id, n_mels, dtype, device)
        silence_features = _windows(silence_features, "silence_features", clip_id, n_mels, dtype, device)
        mask = _tensor(feature_mask, torch.long, device)
        if mask.ndim not in (1, 2) or mask.shape[-1] % ENCODER_FRAMES or mask.numel() == 0:
            raise ValueError(f"{clip_id}: feature_mask must be [W, {ENCODER_FRAMES}] or [W x {ENCODER_FRAMES}], "
                             f"got shape {tuple(mask.shape)}")
        mask = mask.reshape(-1, ENCODER_FRAMES)
        windows = {audio_features.shape[0], silence_features.shape[0], mask.shape[0]}
        if len(windows) != 1:
            raise ValueError(f"{clip_id}: features, silence_features and feature_mask must hold the same number "
                             f"of 30 s windows, got {audio_features.shape[0]}, {silence_features.shape[0]} and "
                             f"{mask.shape[0]}")
        if int(mask.sum()) < 1:
            raise ValueError(f"{clip_id}: feature_mask has no valid frame")
        return audio_features, mask, silence_features


class AudioFlamingo3Family(WindowedFamily):
    """The windows' valid tokens (``get_audio_features``), all gated: one 40 ms grid over the clip."""

    model_type = "audioflamingo3"

    def encode(self, model, features, feature_mask, silence_features):
        audio, silence = encode_audio_flamingo3(model, torch.stack([features, silence_features]), feature_mask)
        return audio, silence, None

    def generate_inputs(self, features, feature_mask):
        return dict(input_features=features, input_features_mask=feature_mask)


class VoxtralFamily(WindowedFamily):
    """Every window's 375 tokens of 80 ms (``get_audio_features``); the first ceil(valid frames / 8) read
    the clip and are gated, the others hear the window's padding and keep the clip's embedding."""

    model_type = "voxtral"
    token_samples = 2 * TOKEN_SAMPLES

    @staticmethod
    def frames_per_token(model: torch.nn.Module) -> int:
        """Mel frames per audio token: conv2's stride 2 times the encoder frames stacked (8)."""
        audio = model.config.audio_config
        return 2 * (audio.intermediate_size // audio.hidden_size)

    def encode(self, model, features, feature_mask, silence_features):
        audio, silence = encode_voxtral(model, torch.stack([features, silence_features]))
        heard = -(-int(feature_mask.sum()) // self.frames_per_token(model))
        gated = torch.arange(audio.shape[0], device=audio.device) < heard
        return audio, silence, gated

    def generate_inputs(self, features, feature_mask):
        return dict(input_features=features)


FAMILIES: dict[str, AudioFamily] = {family.model_type: family for family in (
    Qwen2AudioFamily(), AudioFlamingo3Family(), VoxtralFamily())}


def audio_family(model: torch.nn.Module) -> AudioFamily:
    """The family of a transformers model, by ``config.model_type`` (``FAMILIES``)."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FAMILIES:
        raise ValueError(f"the reference scores {sorted(FAMILIES)} models (config.model_type), got {model_type!r}")
    return FAMILIES[model_type]


def _windows(x: TensorLike, name: str, clip_id: str, n_mels: int, dtype: torch.dtype,
             device: torch.device) -> torch.Tensor:
    """[W, n_mels, 3000] of features given so or side by side as [n_mels, W x 3000]."""
    tensor = _tensor(x, dtype, device)
    if tensor.ndim == 2 and tensor.shape[0] == n_mels and tensor.shape[1] % ENCODER_FRAMES == 0:
        tensor = tensor.reshape(n_mels, -1, ENCODER_FRAMES).transpose(0, 1).contiguous()
    if tensor.ndim != 3 or tensor.shape[0] < 1 or tuple(tensor.shape[1:]) != (n_mels, ENCODER_FRAMES):
        raise ValueError(
            f"{clip_id}: {name} must be 30 s windows, [W, {n_mels}, {ENCODER_FRAMES}] or [{n_mels}, W x "
            f"{ENCODER_FRAMES}], got shape {tuple(tensor.shape)}")
    return tensor


def grid_frames(token_scores: np.ndarray, n_samples: int, rate: int, token_samples: int = TOKEN_SAMPLES) -> np.ndarray:
    """``token_scores_to_frames`` for tokens of `token_samples` samples (a multiple of 640, e.g.
    ``ReferenceScores.token_samples``): each token's score is spread over the 640-sample tokens it spans."""
    if token_samples % TOKEN_SAMPLES:
        raise ValueError(f"token_samples must be a multiple of {TOKEN_SAMPLES}, got {token_samples}")
    return token_scores_to_frames(np.repeat(np.asarray(token_scores), token_samples // TOKEN_SAMPLES), n_samples, rate)


def grid_keep(scores_1d: np.ndarray, n_samples: int, rate: int, rho: float | str,
              token_samples: int = TOKEN_SAMPLES) -> np.ndarray:
    """``reference_keep`` for tokens of `token_samples` samples (``grid_frames``)."""
    if token_samples % TOKEN_SAMPLES:
        raise ValueError(f"token_samples must be a multiple of {TOKEN_SAMPLES}, got {token_samples}")
    return reference_keep(np.repeat(np.asarray(scores_1d), token_samples // TOKEN_SAMPLES), n_samples, rate, rho)


# ----------------------------------------------------------------------------------------------
# The answer
# ----------------------------------------------------------------------------------------------


def _eos_ids(model: torch.nn.Module) -> set[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def greedy_answer(model: torch.nn.Module, input_ids: torch.Tensor, features: torch.Tensor,
                  feature_mask: torch.Tensor, max_new_tokens: int, clip_id: str) -> torch.Tensor:
    """The model's greedy answer under the audio, before the first EOS, never the audio placeholder.

    Args:
        input_ids: [S]; features: [n_mels, 3000]; feature_mask: [3000] (the family's layout:
            ``AudioFamily.inputs``).

    Returns:
        int64 [n], n >= 1.

    Raises:
        ValueError: the answer is empty (the model's first token is an EOS).
    """
    audio_id = int(model.config.audio_token_id)
    suppress = [audio_id] + [int(t) for t in (model.generation_config.suppress_tokens or []) if int(t) != audio_id]
    generated = model.generate(
        input_ids=input_ids[None],
        attention_mask=torch.ones_like(input_ids)[None],
        **audio_family(model).generate_inputs(features, feature_mask),
        do_sample=False,
        max_new_tokens=max_new_tokens,
        suppress_tokens=suppress,
    )[0, input_ids.shape[0]:]
    eos = _eos_ids(model)
    stops = [i for i, token in enumerate(generated.tolist()) if token in eos]
    answer = generated[: stops[0]] if stops else generated
    if answer.numel() == 0:
        raise ValueError(f"{clip_id}: the model's greedy answer is empty (its first token is an EOS)")
    return answer.long()


# ----------------------------------------------------------------------------------------------
# Teacher-forced passes
# ----------------------------------------------------------------------------------------------


@dataclass
class TeacherForced:
    """The teacher-forced sequence prompt + y of one clip, with the audio embeddings to gate.

    Attributes:
        model: a model of ``FAMILIES``.
        embeds: [S + n, d] token embeddings (the gated placeholder rows are replaced by E(m); those of
            placeholders that are not gated hold E_A).
        audio_positions: int64 [T], the sequence position of each gated placeholder.
        audio: [T, d] E_A of the gated tokens.
        silence: [T, d] E_S of the gated tokens.
        answer: int64 [n], y.
        prompt_length: S.
    """

    model: torch.nn.Module
    embeds: torch.Tensor
    audio_positions: torch.Tensor
    audio: torch.Tensor
    silence: torch.Tensor
    answer: torch.Tensor
    prompt_length: int

    @property
    def n_tokens(self) -> int:
        return int(self.audio_positions.shape[0])

    @property
    def answer_rows(self) -> torch.Tensor:
        """int64 [n]: rows S-1+j, whose logits predict y_j."""
        return torch.arange(self.answer.shape[0], device=self.answer.device) + self.prompt_length - 1

    def gated_embeds(self, gates: torch.Tensor) -> torch.Tensor:
        """[B, S + n, d] inputs for gate vectors [B, T]."""
        m = gates[..., None]
        audio = m * self.audio + (1 - m) * self.silence
        batch = gates.shape[0]
        return self.embeds.expand(batch, -1, -1).index_copy(1, self.audio_positions, audio)

    def run(self, gates: torch.Tensor, output_attentions: bool = False):
        """The decoder on gate vectors [B, T]; returns transformers' BaseModelOutputWithPast."""
        batch, length = gates.shape[0], self.embeds.shape[0]
        positions = torch.arange(length, device=self.embeds.device)[None].expand(batch, -1)
        return self.model.model.language_model(
            inputs_embeds=self.gated_embeds(gates),
            position_ids=positions,
            use_cache=False,
            output_attentions=output_attentions,
        )

    def answer_logp(self, hidden: torch.Tensor) -> torch.Tensor:
        """[B] float64 logp of y from the decoder's last hidden states [B, S + n, d]."""
        logits = self.model.lm_head(hidden[:, self.answer_rows]).float()
        token_logp = torch.log_softmax(logits, dim=-1)
        batch = hidden.shape[0]
        picked = token_logp.gather(-1, self.answer[None, :, None].expand(batch, -1, 1))[..., 0]
        return picked.double().sum(-1)

    def answer_target(self, hidden: torch.Tensor, target: str) -> torch.Tensor:
        """[B] float64: logp of y ("logp"), or the sum over y's tokens of log p - log(1 - p) ("log_odds",
        log(1 - p) as the log-sum-exp of the other tokens' logits), from hidden states [B, S + n, d]."""
        if target == "logp":
            return self.answer_logp(hidden)
        logits = self.model.lm_head(hidden[:, self.answer_rows]).float()
        index = self.answer[None, :, None].expand(hidden.shape[0], -1, 1)
        others = torch.logsumexp(logits.scatter(-1, index, float("-inf")), dim=-1)
        return (logits.gather(-1, index)[..., 0] - others).double().sum(-1)

    def logp(self, gates: torch.Tensor, target: str = "logp") -> torch.Tensor:
        """[B] float64 logp(m) (or the answer's `target`) for gate vectors [B, T]; differentiable in the gates."""
        return self.answer_target(self.run(gates).last_hidden_state, target)

    def gates(self, value: float, batch: int = 1) -> torch.Tensor:
        return torch.full((batch, self.n_tokens), value, dtype=self.audio.dtype, device=self.audio.device)

    def for_autograd(self) -> "TeacherForced":
        """A copy whose tensors are normal tensors (not inference tensors), to differentiate through."""
        return TeacherForced(self.model, self.embeds.clone(), self.audio_positions.clone(), self.audio.clone(),
                             self.silence.clone(), self.answer.clone(), self.prompt_length)


def build_teacher_forced(model: torch.nn.Module, input_ids: torch.Tensor, answer: torch.Tensor,
                         audio: torch.Tensor, silence: torch.Tensor, clip_id: str,
                         gated: torch.Tensor | None = None) -> TeacherForced:
    """Embed prompt + y and locate the placeholders; their count must equal T. `gated` [T] bool (None:
    all): the placeholders the gates mix; the others hold E_A in every pass."""
    audio_id = int(model.config.audio_token_id)
    positions = torch.nonzero(input_ids == audio_id)[:, 0]
    if positions.shape[0] != audio.shape[0]:
        raise ValueError(
            f"{clip_id}: input_ids hold {positions.shape[0]} audio placeholders (id {audio_id}) but the features "
            f"give {audio.shape[0]} audio tokens"
        )
    sequence = torch.cat([input_ids, answer])
    embeds = model.get_input_embeddings()(sequence)
    if gated is not None and not bool(gated.all()):
        embeds = embeds.index_copy(0, positions[~gated], audio[~gated].to(embeds.dtype))
        positions, audio, silence = positions[gated], audio[gated], silence[gated]
    return TeacherForced(model, embeds, positions, audio, silence, answer, int(input_ids.shape[0]))


def _fastv_layer(num_layers: int) -> int:
    return min(FASTV_LAYER, num_layers - 1)


def attention_scores(tf: TeacherForced, target: str = "logp") -> tuple[float, np.ndarray, np.ndarray]:
    """One pass at m = 1 with attentions: (the answer's `target` at m = 1 (logp(1) by default), G [T], FastV [T]).

    G_t = sum over layers, heads and answer rows S-1+j of P[l, h, row, pos(t)]; FastV_t = the mean
    over heads and prompt rows 0..S-1 of P[K, h, row, pos(t)], K = min(2, layers - 1).
    """
    out = tf.run(tf.gates(1.0), output_attentions=True)
    logp_full = float(tf.answer_target(out.last_hidden_state, target)[0])
    rows, columns = tf.answer_rows, tf.audio_positions
    global_ = torch.zeros(tf.n_tokens, dtype=torch.float64, device=columns.device)
    for layer in out.attentions:
        global_ += layer[0][:, rows][:, :, columns].double().sum(dim=(0, 1))
    fastv_probs = out.attentions[_fastv_layer(len(out.attentions))][0]
    fastv = fastv_probs[:, : tf.prompt_length][:, :, columns].double().mean(dim=(0, 1))
    return logp_full, global_.cpu().numpy(), fastv.cpu().numpy()


def occlusion_gates(n_tokens: int, window: int) -> np.ndarray:
    """[T, T] gate vectors: row t is 1 except 0 on [t - (W-1)//2, t - (W-1)//2 + W) clipped to [0, T)."""
    if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"occlusion window must be a positive int, got {window!r}")
    token = np.arange(n_tokens)
    start = token[:, None] - (window - 1) // 2
    off = (token[None, :] >= start) & (token[None, :] < start + window)
    return (~off).astype(np.float64)


def occlusion_scores(tf: TeacherForced, logp_full: float, window: int, chunk: int,
                     target: str = "logp") -> np.ndarray:
    """L_t = logp(1) - logp(1 - w_t), the T gate vectors evaluated ``chunk`` at a time; [T] float64.
    ``logp_full`` is the answer's `target` at m = 1."""
    gates = torch.as_tensor(occlusion_gates(tf.n_tokens, window), dtype=tf.audio.dtype, device=tf.audio.device)
    logp = torch.cat([tf.logp(gates[start: start + chunk], target) for start in range(0, tf.n_tokens, chunk)])
    return logp_full - logp.cpu().numpy()


def integrated_gradients_scores(tf: TeacherForced, steps: int, chunk: int, target: str = "logp") -> np.ndarray:
    """L_t = (1/n) sum_i d logp / d m_t at m = (i + 0.5)/n (or of the answer's `target`), ``chunk`` steps
    per backward pass; [T] float64."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"ig_steps must be a positive int, got {steps!r}")
    tf = tf.for_autograd()
    total = torch.zeros(tf.n_tokens, dtype=torch.float64, device=tf.audio.device)
    for start in range(0, steps, chunk):
        stop = min(start + chunk, steps)
        alphas = (torch.arange(start, stop, dtype=torch.float64) + 0.5) / steps
        gates = alphas[:, None].expand(-1, tf.n_tokens).to(device=tf.audio.device, dtype=tf.audio.dtype)
        gates = gates.clone().requires_grad_(True)
        with torch.enable_grad():
            (grad,) = torch.autograd.grad(tf.logp(gates, target).sum(), gates)
        total += grad.double().sum(0)
    return (total / steps).cpu().numpy()


# ----------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------


def _local_scores(tf: TeacherForced, logp_full: float, estimator: str, window: int, ig_steps: int,
                  chunk: int, target: str) -> np.ndarray:
    """The raw local score; `logp_full` is the answer's `target` at m = 1."""
    if estimator == "occlusion":
        with torch.inference_mode():
            return occlusion_scores(tf, logp_full, window, chunk, target)
    return integrated_gradients_scores(tf, ig_steps, chunk, target)


def _check_options(estimator: str, chunk: int, alpha: float, max_new_tokens: int) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive int, got {chunk!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")


def score_clip(
    model: torch.nn.Module,
    input_ids: TensorLike,
    features: TensorLike,
    feature_mask: TensorLike,
    silence_features: TensorLike,
    *,
    estimator: str = "occlusion",
    window: int = 1,
    ig_steps: int = 16,
    alpha: float = 0.5,
    target: str = "logp",
    local_sign: str = "signed",
    local_smooth: int = 1,
    answer_ids: TensorLike | None = None,
    max_new_tokens: int = 8,
    chunk: int = 64,
    clip_id: str = "clip",
    mode: str = "eager",
) -> ReferenceScores:
    """All scores of one clip (module docstring, steps 1 to 6).

    Args:
        model: a model of ``FAMILIES`` (Qwen2-Audio, Audio Flamingo 3, Voxtral) in eval mode (eager
          attention in mode "eager").
        input_ids: int [S], the prompt with expanded placeholders, no padding.
        features: float [n_mels, 3000]; feature_mask: int [3000] (as the processor gives them). Audio
          Flamingo 3 and Voxtral: the clip's 30 s windows, [W, n_mels, 3000] or [n_mels, W x 3000], and
          the mask [W, 3000] or [W x 3000] of its valid frames (``ReferenceClip``).
        silence_features: float, the log-mel of zeros of the clip's length (features' layout, same mask).
        estimator: "occlusion" or "integrated_gradients".
        window: occlusion window W (tokens); ig_steps: midpoint-rule steps n.
        alpha: fusion weight of the local score.
        target: what the local score contrasts, "logp" (DESIGN.md) or "log_odds" (`TeacherForced.answer_target`).
        local_sign, local_smooth: what the fusion reads of the local score (`selection.local_evidence`):
          "signed" or "magnitude", and the width of its box filter in tokens (1: none).
        answer_ids: int [n], used exactly; None: the greedy answer of at most max_new_tokens tokens.
        chunk: gate vectors (occlusion) or IG steps per decoder batch.
        clip_id: the name error messages use.
        mode: "eager" (every pass with eager attention) or "strong" (SDPA wherever no attention map is
          read; module docstring).
    """
    _check_model(model, mode)
    _check_options(estimator, chunk, alpha, max_new_tokens)
    if target not in ("logp", "log_odds"):
        raise ValueError(f"target must be 'logp' or 'log_odds', got {target!r}")
    device, dtype = _model_device_dtype(model)
    family = audio_family(model)
    ids = _vector(input_ids, "input_ids", clip_id, torch.long, device)
    audio_features, mask, silence_features = family.inputs(model, features, feature_mask, silence_features,
                                                           clip_id, dtype, device)
    maps, others = _pass_implementations(mode)
    timer = _StageTimer()
    with timer.stage("total"):
        with torch.inference_mode():
            with timer.stage("encode"), attention_implementation(model, others):
                audio, silence, gated = family.encode(model, audio_features, mask, silence_features)
            with timer.stage("answer"), attention_implementation(model, others):
                if answer_ids is None:
                    answer = greedy_answer(model, ids, audio_features, mask, max_new_tokens, clip_id)
                else:
                    answer = _vector(answer_ids, "answer_ids", clip_id, torch.long, device)
                    if answer.numel() == 0:
                        raise ValueError(f"{clip_id}: answer_ids is empty")
            tf = build_teacher_forced(model, ids, answer, audio, silence, clip_id, gated)
            with timer.stage("attention"), attention_implementation(model, maps):
                logp_full, global_, fastv = attention_scores(tf, target if mode == "strong" else "logp")
            with timer.stage("silence"), attention_implementation(model, others):
                logp_silence = float(tf.logp(tf.gates(0.0), target)[0])
                if target != "logp" and mode == "eager":
                    logp_full = float(tf.logp(tf.gates(1.0), target)[0])
        with timer.stage("local"), attention_implementation(model, others):
            local = local_evidence(_local_scores(tf, logp_full, estimator, window, ig_steps, chunk, target),
                                   sign=local_sign, smooth=local_smooth)
        with timer.stage("fusion"):
            fused = fuse_scores(local, global_, alpha)
    return ReferenceScores(
        answer_ids=answer.cpu().numpy().astype(np.int64),
        logp_full=logp_full,
        logp_silence=logp_silence,
        local=local,
        global_=global_,
        fastv=fastv,
        fused=fused,
        seconds=timer.seconds,
        token_samples=family.token_samples,
    )


def score_clips(
    model: torch.nn.Module,
    clips: Sequence[ReferenceClip],
    *,
    progress: Callable[[int, ReferenceScores], None] | None = None,
    **options,
) -> list[ReferenceScores]:
    """:func:`score_clip` for each clip, in order; ``options`` as score_clip's keywords.

    ``progress(index, scores)`` is called after each clip (e.g. to append results as they finish).
    """
    results = []
    for index, clip in enumerate(clips):
        scores = score_clip(model, clip.input_ids, clip.features, clip.feature_mask, clip.silence_features,
                            answer_ids=clip.answer_ids, clip_id=clip.clip_id, **options)
        results.append(scores)
        if progress is not None:
            progress(index, scores)
    return results


__all__ = [
    "CODEC_TOKEN_RATES",
    "ESTIMATORS",
    "FAMILIES",
    "FASTV_LAYER",
    "MODES",
    "TOKEN_SAMPLES",
    "AudioFamily",
    "ReferenceClip",
    "ReferenceScores",
    "TeacherForced",
    "attention_implementation",
    "attention_scores",
    "audio_family",
    "build_teacher_forced",
    "encode_audio",
    "encode_audio_flamingo3",
    "encode_voxtral",
    "encoder_output_lengths",
    "frame_samples",
    "fuse_scores",
    "greedy_answer",
    "grid_frames",
    "grid_keep",
    "integrated_gradients_scores",
    "keep_count",
    "minmax_normalize",
    "occlusion_gates",
    "occlusion_scores",
    "reference_keep",
    "score_clip",
    "score_clips",
    "token_scores_to_frames",
]
