"""ImageBind's video front end (agac_jax/models/pandagpt/video.py) against a torch transcription of
ImageBind's load_and_transform_video_data steps, on a video generated with ffmpeg."""

from __future__ import annotations

import math
import subprocess

import numpy as np
import pytest
import torch

from agac_jax.models.pandagpt import video as iv
from agac_jax.data.avhbench import find_ffmpeg


def make_video(path, seconds=3, size="80x60", rate=10):
    """An mp4 with a test pattern and a 440 Hz soundtrack (what the AVHBench loader reads)."""
    subprocess.run([find_ffmpeg(), "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc=size={size}:rate={rate}:duration={seconds}", "-f", "lavfi", "-i",
                    f"sine=frequency=440:duration={seconds}:sample_rate=16000", "-shortest", "-c:v", "mpeg4",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", str(path)], check=True)
    return path


def _torch_reference(frames, fps, size):
    """The same steps with torch ops: decord's clip frames, UniformTemporalSubsample, /255,
    pytorchvideo's short_side_scale (F.interpolate bilinear, align_corners=False), CLIP
    normalisation, ImageBind's SpatialCrop(size, 3)."""
    video = torch.tensor(frames).permute(3, 0, 1, 2).float()  # [C, N, H, W]
    n = frames.shape[0]
    duration = n / fps
    step = max(duration - 2, 0) / 4
    out = []
    for k in range(5):
        start, end = step * k, step * k + 2
        idx = torch.arange(math.ceil(fps * start), min(math.ceil(fps * end), n))
        clip = video[:, idx][:, torch.linspace(0, len(idx) - 1, 2).clamp(0, len(idx) - 1).long()] / 255.0
        c, t, h, w = clip.shape
        new_h, new_w = (int(math.floor(h / w * size)), size) if w < h else (size, int(math.floor(w / h * size)))
        clip = torch.nn.functional.interpolate(clip, size=(new_h, new_w), mode="bilinear", align_corners=False)
        mean = torch.tensor(iv.CLIP_MEAN)[:, None, None, None]
        std = torch.tensor(iv.CLIP_STD)[:, None, None, None]
        clip = (clip - mean) / std
        h, w = clip.shape[-2:]
        for i in range(3):
            y, x = int(math.ceil((h - size) / 2)), int(math.ceil((w - size) / 2))
            if h > w:
                y = {0: 0, 2: h - size}.get(i, y)
            else:
                x = {0: 0, 2: w - size}.get(i, x)
            out.append(clip[:, :, y:y + size, x:x + size])
    return torch.stack(out).numpy()


@pytest.mark.parametrize("size", ["80x60", "48x64"])
def test_video_inputs_match_the_torch_steps(tmp_path, size):
    path = make_video(tmp_path / "v.mp4", size=size)
    frames, fps = iv.read_frames(path)
    assert frames.shape == (30, *reversed([int(s) for s in size.split("x")]), 3) and fps == 10
    got = iv.video_inputs(frames, fps, size=64)
    assert got.shape == (15, 3, 2, 64, 64)
    np.testing.assert_allclose(got, _torch_reference(frames, fps, 64), atol=2e-5)
    assert iv.load_video_inputs(path, size=64).shape == got.shape
