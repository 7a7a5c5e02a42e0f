"""ImageBind's PyTorch model as released (`imagebind-unofficial`), importable beside torch 2.13
(the PyTorch side of `launch.parity` for PandaGPT and of tests/test_pandagpt_*.py).

The package's `__init__` imports its data module (pytorchvideo, torchvision, torchaudio), which does
not load here; the models need none of it. They import two names from timm (whose import needs
torchvision): `DropPath`, used only when a drop-path rate is set (PandaGPT's inference runs in eval
mode, where DropPath is the identity; the references build every trunk with rate 0, so it is never
instantiated), and `trunc_normal_`, an initialiser (timm's is the same algorithm as
`torch.nn.init.trunc_normal_`; random weights need not match anyway). So a two-name stand-in for
`timm.layers` is exact for the forward pass, and `imagebind` is registered as a namespace over the
installed directory without running its `__init__`. (The alternative, a torch 2.11 environment
with real timm as tools/setup_codec_env.sh builds, costs 4.9 GB and a second interpreter for the
same code path.)
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch


def _install_timm_stand_in() -> None:
    if "timm.layers" in sys.modules:
        return

    class DropPath(torch.nn.Module):
        """Identity (inference); the references never build one with a positive rate."""

        def __init__(self, drop_prob: float = 0.0):
            super().__init__()
            if drop_prob:
                raise NotImplementedError("the stand-in DropPath is inference-only")

        def forward(self, x):
            return x

    timm = types.ModuleType("timm")
    layers = types.ModuleType("timm.layers")
    layers.DropPath = DropPath
    layers.trunc_normal_ = torch.nn.init.trunc_normal_
    timm.layers = layers
    sys.modules.update({"timm": timm, "timm.layers": layers})


def imagebind_model():
    """The `imagebind.models.imagebind_model` module of the installed package."""
    _install_timm_stand_in()
    if "imagebind" not in sys.modules:
        spec = importlib.util.find_spec("imagebind")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("imagebind-unofficial is not installed: run tools/setup.sh (requirements-nodeps.txt)")
        package = types.ModuleType("imagebind")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["imagebind"] = package
    from imagebind.models import imagebind_model as module

    return module


def imagebind_kwargs(config) -> dict:
    """ImageBindModel's constructor arguments for an `ImageBindConfig` (the audio and vision branches;
    the four other branches tiny, every drop-path rate 0)."""
    return dict(out_embed_dim=config.out_embed_dim, vision_embed_dim=config.vision_embed_dim,
                vision_num_blocks=config.vision_num_blocks, vision_num_heads=config.vision_num_heads,
                audio_embed_dim=config.audio_embed_dim, audio_num_blocks=config.audio_num_blocks,
                audio_num_heads=config.audio_num_heads, audio_kernel_size=config.audio_kernel_size,
                audio_stride=config.audio_stride, audio_drop_path=0.0,
                text_embed_dim=16, text_num_blocks=1, text_num_heads=2, depth_embed_dim=16,
                depth_num_blocks=1, depth_num_heads=2, thermal_embed_dim=16, thermal_num_blocks=1,
                thermal_num_heads=2, imu_embed_dim=16, imu_num_blocks=1, imu_num_heads=2, imu_drop_path=0.0)
