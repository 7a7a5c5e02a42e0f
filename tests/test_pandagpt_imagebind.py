"""ImageBind's audio and vision branches (agac_jax/models/pandagpt/imagebind.py) against imagebind-unofficial, tiny random."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from agac_jax.models.pandagpt.checkpoints import IMAGEBIND_NAME_MAP, map_keys, unflatten
from agac_jax.models.pandagpt.imagebind import AudioEncoder, ImageBindConfig, VisionEncoder
from tests.imagebind_reference import state_dict_numpy, tiny_imagebind

RTOL = 1e-4
CONFIG = ImageBindConfig(out_embed_dim=24, audio_embed_dim=32, audio_num_blocks=2, audio_num_heads=4,
                         vision_embed_dim=32, vision_num_blocks=2, vision_num_heads=4)


def assert_close(actual, expected, what):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    err = np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12)
    assert err <= RTOL, f"{what}: max relative difference {err:.2e} > {RTOL:.0e}"


@pytest.fixture(scope="module")
def reference():
    model, modality = tiny_imagebind()
    flat, unmatched = map_keys(state_dict_numpy(model), IMAGEBIND_NAME_MAP)
    assert all(k.split(".")[1] not in ("audio", "vision") or "logit_scale" in k for k in unmatched), unmatched
    return model, modality, unflatten(flat)["imagebind"]


def _branch(model, modality, key, x):
    """Preprocessor, trunk, head and L2 normalisation (no logit scale, as PandaGPT uses it)."""
    with torch.no_grad():
        tokens = model.modality_preprocessors[key](**{key: x})["trunk"]["tokens"]
        out = model.modality_heads[key](model.modality_trunks[key](tokens=tokens))
        return torch.nn.functional.normalize(out, dim=-1).numpy()


def _cls_rows(model, key, x):
    """[B, layers, heads, keys] the CLS query's attention of every block, recomputed with weights."""
    rows = []

    def hook(module, args, _out):
        _, w = torch.nn.MultiheadAttention.forward(module, args[0], args[0], args[0], need_weights=True,
                                                   average_attn_weights=False)
        rows.append(w[:, :, 0])  # the trunk runs sequence-first; weights are [B, H, L, L + 1]

    handles = [blk.attn.register_forward_hook(hook) for blk in model.modality_trunks[key].blocks]
    try:
        with torch.no_grad():
            tokens = model.modality_preprocessors[key](**{key: x})["trunk"]["tokens"]
            model.modality_trunks[key](tokens=tokens)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(rows, dim=1).numpy()


def test_audio_branch_and_cls_attention_match(reference):
    model, modality, params = reference
    fbank = np.random.default_rng(0).standard_normal((2, 1, 128, 204)).astype(np.float32)
    expected = _branch(model, None, modality.AUDIO, torch.tensor(fbank))
    emb, rows = AudioEncoder(CONFIG).apply({"params": params["audio"]}, jnp.asarray(fbank[:, 0]))
    assert emb.shape == (2, 24)
    assert_close(emb, expected, "audio embedding")
    full = _cls_rows(model, modality.AUDIO, torch.tensor(fbank))  # keys: CLS, 228 patches, bias key
    assert full.shape[-1] == 1 + 12 * 19 + 1
    patches = full[..., 1:-1] / full[..., 1:-1].sum(-1, keepdims=True)
    assert_close(rows, patches, "audio CLS attention over the patches")
    assert full[..., -1].max() > 1e-3  # the bias key takes real mass: removing it matters


def test_vision_branch_matches_for_video_and_image(reference):
    model, modality, params = reference
    rng = np.random.default_rng(1)
    video = rng.standard_normal((2, 3, 2, 224, 224)).astype(np.float32)
    expected = _branch(model, None, modality.VISION, torch.tensor(video))
    got = VisionEncoder(CONFIG).apply({"params": params["vision"]}, jnp.asarray(video))
    assert_close(got, expected, "video embedding")
    image = video[:, :, 0]
    expected = _branch(model, None, modality.VISION, torch.tensor(image))
    assert_close(VisionEncoder(CONFIG).apply({"params": params["vision"]}, jnp.asarray(image)), expected,
                 "image embedding (repeated to two frames)")
