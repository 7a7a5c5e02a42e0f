"""Audio Flamingo 3 in Flax linen: Whisper encoder per 30 s window, MLP projector, Qwen2 decoder, LM head.

The module is Qwen2-Audio's (`qwen2_audio.model.Qwen2AudioForConditionalGeneration`, subclassed): the
same shared encoder (`models.audio_encoder.AudioEncoder`: conv front end, learned positions, pre-LN
layers with key masking, AvgPool(2), LayerNorm, as transformers' `AudioFlamingo3Encoder`), the same
decoder (`models.decoder.Decoder`, attention sown), the same placeholder merge and the same interface
methods (`models.interface`). What differs, following transformers' `AudioFlamingo3ForConditionalGeneration`:

- the projector (`multi_modal_projector`): `linear_2(gelu(linear_1(x)))`, with biases when
  `projector_bias` (Qwen2-Audio: one `linear`);
- long audio: the processor cuts a clip into 30 s windows (at most `max_audio_len` / 30 of them) and
  the encoder runs on each window on its own; the clip's audio tokens are the windows' valid tokens in
  order. `encode_audio` takes a clip's windows side by side on the frame axis (`window_frames` each,
  the last one possibly a shorter bucket) and returns them concatenated, so the audio state stays on
  one 40 ms grid per clip: every window but the last is full (750 tokens = 30 s exactly), token t
  covers samples [640 t, 640 t + 640) of the clip, and the valid tokens are a prefix (`n_tokens`).
  Windows a clip does not reach (shorter clips in a batch of longer ones) have no valid frames and
  give no tokens;
- the LM head is never tied to the embeddings (see `config`).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from agac_jax.models.audio_encoder import AudioEncoder
from agac_jax.models.audio_flamingo3.config import AudioFlamingo3Config
from agac_jax.models.decoder import Decoder
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration

Array = jax.Array


class MultiModalProjector(nn.Module):
    """`linear_2(gelu(linear_1(x)))` (transformers' `AudioFlamingo3MultiModalProjector`, exact GELU)."""

    hidden_size: int
    use_bias: bool = True
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        dense = lambda name, axes: nn.Dense(
            self.hidden_size, use_bias=self.use_bias, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), axes), name=name)
        x = jax.nn.gelu(dense("linear_1", ("audio_embed", "embed"))(x), approximate=False)
        return dense("linear_2", ("mlp", "embed"))(x)


def window_lengths(mel_lengths: Array, num_windows: int, window_frames: int) -> Array:
    """[A] valid mel frames of whole clips -> [A, W] valid frames of each window (full windows first,
    then the remainder, then zeros), as the processor cuts them."""
    starts = jnp.arange(num_windows) * window_frames
    return jnp.clip(mel_lengths[:, None] - starts[None, :], 0, window_frames).astype(jnp.int32)


class AudioFlamingo3ForConditionalGeneration(Qwen2AudioForConditionalGeneration):
    """The whole model. Shapes: B prompts, S prompt length, A clips, W windows, P mel frames (all windows
    side by side), T audio tokens (= P // 4)."""

    config: AudioFlamingo3Config

    def setup(self):
        c = self.config
        self.audio_tower = AudioEncoder(c.audio, c.dtype, c.param_dtype)
        self.multi_modal_projector = MultiModalProjector(c.text.hidden_size, c.projector_bias, c.dtype,
                                                         c.param_dtype)
        self.language_model = Decoder(c.text, c.dtype, c.param_dtype, c.scan_layers, c.remat_layers)
        self.lm_head = nn.Dense(
            c.text.vocab_size,
            use_bias=False,
            dtype=c.dtype,
            param_dtype=c.param_dtype,
            kernel_init=nn.with_logical_partitioning(nn.initializers.normal(0.02), ("embed", "vocab")),
        )

    def encode_windows(self, features: Array, mel_lengths: Array) -> tuple[Array, Array]:
        """features [N, n_mels, F] of N windows (F <= window_frames, even), mel_lengths [N] ->
        (projected embeddings [N, F // 4, D], valid tokens [N]): transformers' `get_audio_features`
        per window, before it keeps the valid rows."""
        hidden, num_tokens = self.audio_tower(features, mel_lengths)
        return self.multi_modal_projector(hidden), num_tokens

    def encode_audio(self, features: Array, mel_lengths: Array) -> tuple[Array, Array]:
        """features [A, n_mels, P], mel_lengths [A] (valid frames of the whole clip) -> (audio [A, T, D],
        valid tokens [A]).

        P is one window or less (a bucket, as Qwen2-Audio), or (W - 1) full windows then a last one of
        `P - (W - 1) * window_frames` frames (a bucket of the last window, even, at least 4).
        """
        window = self.config.window_frames
        a, n_mels, p = features.shape
        if p <= window:
            return self.encode_windows(features, mel_lengths)
        n_win = -(-p // window)
        lengths = window_lengths(mel_lengths, n_win, window)
        full = n_win if p % window == 0 else n_win - 1  # windows of exactly `window` frames, encoded as one batch
        head = features[:, :, : full * window].reshape(a, n_mels, full, window).transpose(0, 2, 1, 3)
        audio, tokens = self.encode_windows(head.reshape(a * full, n_mels, window), lengths[:, :full].reshape(-1))
        audio, n_tokens = audio.reshape(a, full * audio.shape[1], -1), tokens.reshape(a, full).sum(axis=1)
        if full < n_win:  # the last column, a shorter bucket
            tail_audio, tail_tokens = self.encode_windows(features[:, :, full * window:], lengths[:, full])
            audio, n_tokens = jnp.concatenate([audio, tail_audio], axis=1), n_tokens + tail_tokens
        return audio, n_tokens


def init_params(config: AudioFlamingo3Config, rng: Array, mel_frames: int = 8) -> Any:
    """Random parameters (boxed with logical axis names) for `config`."""
    model = AudioFlamingo3ForConditionalGeneration(config)
    ids = jnp.zeros((1, 4), jnp.int32)
    feats = jnp.zeros((1, config.audio.num_mel_bins, mel_frames), jnp.float32)
    return model.init(rng, ids, jnp.ones((1, 4), jnp.int32), feats, jnp.full((1,), mel_frames))["params"]
