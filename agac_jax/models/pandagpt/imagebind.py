"""ImageBind's audio and vision branches (PandaGPT's frozen encoder) in Flax linen.

Each branch is stem -> [CLS] + patches + learned positions -> pre-LN transformer blocks -> head
LayerNorm -> the CLS row -> Linear (no bias) -> L2 normalisation. PandaGPT applies no logit scale
after the normalisation (ImageBind's x20 for audio is a retrieval temperature it does not use) and
averages the unit vectors of a clip's sub-clips without renormalising (`PandaGPT.encode_*`).

- Audio: fbank [B, n_mels = 128, frames = 204] -> Conv2d(1 -> E, k 16, s 10, no bias) -> a
  12 (mel) x 19 (time) patch grid, flattened mel-major (patch h * 19 + w) -> LayerNorm (eps 1e-5)
  -> 12 blocks (12 heads, MLP 4E, exact GELU, `add_bias_kv`: a learned extra key and value appended
  after the in-projection) -> head.
- Vision: frames [B, 3, T, 224, 224] (T = 1 is repeated to 2, ImageBind's PadIm2Video) ->
  Conv3d(3 -> E, kernel = stride = (2, 14, 14), no bias) -> 256 patches (time-major) -> a
  LayerNorm (eps 1e-6) before the blocks -> 32 blocks (16 heads, no bias key) -> head.

Every block LayerNorm has eps 1e-6. The audio branch also returns, per layer and head, the CLS
query's attention over the patches with the bias key removed and the row renormalised
(`cls_attention`, the PandaGPT global score's input). Parameter names follow `checkpoints_pandagpt.
IMAGEBIND_NAME_MAP`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class ImageBindConfig:
    """ImageBindModel's constructor arguments for the two branches; defaults are imagebind_huge."""

    out_embed_dim: int = 1024
    audio_embed_dim: int = 768
    audio_num_blocks: int = 12
    audio_num_heads: int = 12
    audio_kernel_size: int = 16
    audio_stride: int = 10
    audio_num_mel_bins: int = 128
    audio_target_len: int = 204
    vision_embed_dim: int = 1280
    vision_num_blocks: int = 32
    vision_num_heads: int = 16
    video_frames: int = 2
    vision_kernel_size: tuple[int, int, int] = (2, 14, 14)
    image_size: int = 224

    @property
    def audio_patch_grid(self) -> tuple[int, int]:
        """(mel rows, time columns) of the audio patch grid: (12, 19) for huge."""
        k, s = self.audio_kernel_size, self.audio_stride
        return (self.audio_num_mel_bins - k) // s + 1, (self.audio_target_len - k) // s + 1

    @property
    def vision_num_patches(self) -> int:
        kt, kh, kw = self.vision_kernel_size
        return (self.video_frames // kt) * (self.image_size // kh) * (self.image_size // kw)


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


def l2_normalize(x: Array, eps: float = 1e-12) -> Array:
    """x / max(||x||, eps) over the last axis (torch.nn.functional.normalize)."""
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class MultiheadAttention(nn.Module):
    """torch.nn.MultiheadAttention (self-attention, fused in-projection with bias, optional bias_kv)."""

    embed_dim: int
    num_heads: int
    add_bias_kv: bool

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        """x [B, N, E] -> (out [B, N, E], probs [B, H, N, N + add_bias_kv])."""
        b, n, e = x.shape
        h, hd = self.num_heads, e // self.num_heads
        q, k, v = jnp.split(nn.Dense(3 * e, name="in_proj")(x), 3, axis=-1)
        if self.add_bias_kv:
            bias_k = self.param("bias_k", nn.initializers.normal(0.02), (1, 1, e))
            bias_v = self.param("bias_v", nn.initializers.normal(0.02), (1, 1, e))
            k = jnp.concatenate([k, jnp.broadcast_to(bias_k, (b, 1, e))], axis=1)
            v = jnp.concatenate([v, jnp.broadcast_to(bias_v, (b, 1, e))], axis=1)
        heads = lambda t: t.reshape(b, t.shape[1], h, hd).transpose(0, 2, 1, 3)  # noqa: E731
        scores = jnp.einsum("bhqd,bhkd->bhqk", heads(q) * hd**-0.5, heads(k))
        probs = jax.nn.softmax(scores.astype(jnp.float32), axis=-1)
        out = jnp.einsum("bhqk,bhkd->bhqd", probs, heads(v)).transpose(0, 2, 1, 3).reshape(b, n, e)
        return nn.Dense(e, name="out_proj")(out), probs


class Block(nn.Module):
    """Pre-LN block: x + attn(norm_1(x)), then + mlp(norm_2(.)) with fc1 (4E), exact GELU, fc2."""

    embed_dim: int
    num_heads: int
    add_bias_kv: bool

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, Array]:
        """x [B, N, E] -> (x [B, N, E], attention probs [B, H, N, N (+1)])."""
        h, probs = MultiheadAttention(self.embed_dim, self.num_heads, self.add_bias_kv, name="attn")(
            _layer_norm(1e-6, "norm_1")(x))
        x = x + h
        return x + Mlp(self.embed_dim, name="mlp")(_layer_norm(1e-6, "norm_2")(x)), probs


class Mlp(nn.Module):
    """fc1 (E -> 4E), exact GELU, fc2 (4E -> E)."""

    embed_dim: int

    @nn.compact
    def __call__(self, y: Array) -> Array:
        """[B, N, E] -> [B, N, E]."""
        return nn.Dense(self.embed_dim, name="fc2")(jax.nn.gelu(nn.Dense(4 * self.embed_dim, name="fc1")(y),
                                                                approximate=False))


def _embed_and_run(module: nn.Module, patches: Array, embed_dim: int, num_blocks: int, num_heads: int,
                   add_bias_kv: bool, pre_norm: bool) -> tuple[Array, list[Array]]:
    """patches [B, N, E] -> (head output [B, out], per block probs [B, H, 1 + N, keys])."""
    b, n, e = patches.shape
    cls = module.param("cls_token", nn.initializers.normal(embed_dim**-0.5), (1, 1, e))
    pos = module.param("pos_embed", nn.initializers.normal(embed_dim**-0.5), (1, 1 + n, e))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, e)), patches], axis=1) + pos
    if pre_norm:
        x = _layer_norm(1e-6, "pre_norm")(x)
    all_probs = []
    for i in range(num_blocks):
        x, probs = Block(embed_dim, num_heads, add_bias_kv, name=f"blocks_{i}")(x)
        all_probs.append(probs)
    x = _layer_norm(1e-6, "head_norm")(x)[:, 0]
    return x, all_probs


class AudioEncoder(nn.Module):
    """ImageBind's audio branch: normalised fbank [B, n_mels, frames] -> (unit vector [B, out], cls_attention)."""

    config: ImageBindConfig

    @nn.compact
    def __call__(self, fbank: Array) -> tuple[Array, Array]:
        """fbank [B, n_mels, frames] (normalised, (x + 4.268) / 9.138) -> (embedding [B, out_embed_dim],
        cls_attention [B, layers, heads, mel rows * time columns]: the CLS row over the patches, bias
        key removed, renormalised)."""
        c = self.config
        k, s = c.audio_kernel_size, c.audio_stride
        x = nn.Conv(c.audio_embed_dim, (k, k), strides=(s, s), padding="VALID", use_bias=False, name="stem")(
            fbank[..., None])
        b, gh, gw, e = x.shape
        x = _layer_norm(1e-5, "stem_norm")(x.reshape(b, gh * gw, e))
        cls_out, probs = _embed_and_run(self, x, c.audio_embed_dim, c.audio_num_blocks, c.audio_num_heads,
                                        add_bias_kv=True, pre_norm=False)
        rows = jnp.stack([p[:, :, 0, 1:1 + gh * gw] for p in probs], axis=1)  # drop CLS key and bias key
        rows = rows / jnp.sum(rows, axis=-1, keepdims=True)
        head = nn.Dense(c.out_embed_dim, use_bias=False, name="head")(cls_out)
        return l2_normalize(head), rows


class VisionEncoder(nn.Module):
    """ImageBind's vision branch: frames [B, 3, T, H, W] (CLIP-normalised) -> unit vector [B, out]."""

    config: ImageBindConfig

    @nn.compact
    def __call__(self, frames: Array) -> Array:
        """frames [B, 3, T, H, W] or images [B, 3, H, W] -> [B, out_embed_dim]."""
        c = self.config
        if frames.ndim == 4:
            frames = frames[:, :, None]
        if frames.shape[2] == 1:
            frames = jnp.repeat(frames, 2, axis=2)
        x = nn.Conv(c.vision_embed_dim, c.vision_kernel_size, strides=c.vision_kernel_size, padding="VALID",
                    use_bias=False, name="stem")(frames.transpose(0, 2, 3, 4, 1))
        b = x.shape[0]
        x = x.reshape(b, -1, c.vision_embed_dim)
        cls_out, _ = _embed_and_run(self, x, c.vision_embed_dim, c.vision_num_blocks, c.vision_num_heads,
                                    add_bias_kv=False, pre_norm=True)
        return l2_normalize(nn.Dense(c.out_embed_dim, use_bias=False, name="head")(cls_out))


class ImageBind(nn.Module):
    """The two branches PandaGPT uses, named `audio` and `vision`."""

    config: ImageBindConfig

    def setup(self):
        self.audio = AudioEncoder(self.config)
        self.vision = VisionEncoder(self.config)

    def __call__(self, fbank: Array, frames: Array) -> tuple[Array, Array]:
        """Both branches (for initialisation): ([B, out], [B, out])."""
        return self.audio(fbank)[0], self.vision(frames)
