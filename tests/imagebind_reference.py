"""The PyTorch ImageBind the tests compare against: `agac_jax.models.pandagpt.torch_reference` (why it is
imported without the package `__init__` and with a two-name timm stand-in is written there), plus
tiny random models."""

from __future__ import annotations

from pathlib import Path

import torch

from agac_jax.models.pandagpt.torch_reference import imagebind_model

def tiny_imagebind(seed: int = 0, **sizes):
    """A random ImageBindModel in eval mode with tiny widths (every drop-path rate 0)."""
    module = imagebind_model()
    torch.manual_seed(seed)
    kwargs = dict(out_embed_dim=24, vision_embed_dim=32, vision_num_blocks=2, vision_num_heads=4,
                  audio_embed_dim=32, audio_num_blocks=2, audio_num_heads=4, audio_drop_path=0.0,
                  text_embed_dim=16, text_num_blocks=1, text_num_heads=2, depth_embed_dim=16,
                  depth_num_blocks=1, depth_num_heads=2, thermal_embed_dim=16, thermal_num_blocks=1,
                  thermal_num_heads=2, imu_embed_dim=16, imu_num_blocks=1, imu_num_heads=2, imu_drop_path=0.0)
    kwargs.update(sizes)
    model = module.ImageBindModel(**kwargs).eval()
    with torch.no_grad():  # non-trivial LayerNorms and bias keys
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith(("bias_k", "bias_v")) or ".0." in name:
                p.add_(0.3 * torch.randn_like(p))
    return model, module.ModalityType


def state_dict_numpy(model) -> dict:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


__all__ = ["imagebind_model", "tiny_imagebind", "state_dict_numpy", "Path"]
