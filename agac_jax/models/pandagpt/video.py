"""ImageBind's video front end as PandaGPT calls it (`load_and_transform_video_data`), in numpy.

For one video: 5 sub-clips of 2 s by the same ConstantClipsPerVideoSampler rule as the audio
(`kaldi_fbank.clip_windows(duration, 2, 5)`); from each, the frames decord returns for [start, end)
(indices ceil(fps start) .. ceil(fps end) - 1, at most the last frame: pytorchvideo's
`EncodedVideoDecord.get_clip`), of which UniformTemporalSubsample(2) keeps linspace(0, n - 1, 2)
truncated (the first and the last); pixels / 255; ShortSideScale(224) (bilinear, half-pixel centres,
no antialiasing: torch `interpolate(mode="bilinear", align_corners=False)`; the long side becomes
floor(long / short * 224)); CLIP mean/std; then SpatialCrop(224, 3): three 224 x 224 crops along the
long side (start, centre ceil((L - 224) / 2), end). Result: [15, 3, 2, 224, 224] float32, clip-major,
the vision trunk's inputs (`PandaGPT.video_embedding` averages their unit vectors).

The duration is decord's, frames / fps. Frames are decoded with ffmpeg (`avhbench.find_ffmpeg`: the
one on PATH or the pinned imageio-ffmpeg build) at the stream's own rate.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from agac_jax.models.pandagpt import fbank as kf

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VIDEO_CLIPS = 5
FRAMES_PER_CLIP = 2
CROPS = 3
SIZE = 224


def read_frames(path: Path | str, ffmpeg: str | None = None) -> tuple[np.ndarray, float]:
    """All frames of a video as uint8 [N, H, W, 3] and its frame rate."""
    import imageio_ffmpeg

    from agac_jax.data.avhbench import find_ffmpeg

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"video {path} not found")
    os.environ.setdefault("IMAGEIO_FFMPEG_EXE", find_ffmpeg(ffmpeg))
    reader = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
    meta = next(reader)
    w, h = meta["size"]
    frames = [np.frombuffer(f, np.uint8).reshape(h, w, 3) for f in reader]
    if not frames:
        raise ValueError(f"ffmpeg decoded no frame of {path}")
    return np.stack(frames), float(meta["fps"])


def resize_bilinear(x: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """[..., H, W] -> [..., out_h, out_w]: torch's bilinear interpolation with align_corners=False."""

    def axis_weights(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        hi = np.minimum(lo + 1, n_in - 1)
        frac = src - lo
        return lo, hi, frac

    h, w = x.shape[-2:]
    lo, hi, f = axis_weights(h, out_h)
    x = x[..., lo, :] * (1 - f)[:, None] + x[..., hi, :] * f[:, None]
    lo, hi, f = axis_weights(w, out_w)
    return x[..., lo] * (1 - f) + x[..., hi] * f


def short_side_scale(video: np.ndarray, size: int = SIZE) -> np.ndarray:
    """[C, T, H, W] -> the short side `size`, the long one floor(long / short * size) (pytorchvideo)."""
    h, w = video.shape[-2:]
    if w < h:
        new_h, new_w = int(math.floor(h / w * size)), size
    else:
        new_h, new_w = size, int(math.floor(w / h * size))
    return resize_bilinear(video, new_h, new_w)


def spatial_crops(video: np.ndarray, size: int = SIZE) -> list[np.ndarray]:
    """ImageBind's SpatialCrop(size, 3) of [C, T, H, W]: start, centre and end of the long side."""
    h, w = video.shape[-2:]
    crops = []
    for idx in range(CROPS):
        y, x = int(math.ceil((h - size) / 2)), int(math.ceil((w - size) / 2))
        if h > w:
            y = 0 if idx == 0 else h - size if idx == 2 else y
        else:
            x = 0 if idx == 0 else w - size if idx == 2 else x
        crops.append(video[:, :, y:y + size, x:x + size])
    return crops


def video_inputs(frames: np.ndarray, fps: float, size: int = SIZE) -> np.ndarray:
    """uint8 frames [N, H, W, 3] at `fps` -> the vision trunk's inputs [15, 3, 2, size, size] float32."""
    n = frames.shape[0]
    mean = np.asarray(CLIP_MEAN, np.float32)[:, None, None, None]
    std = np.asarray(CLIP_STD, np.float32)[:, None, None, None]
    out = []
    for start, end in kf.clip_windows(n / fps, kf.CLIP_SECONDS, VIDEO_CLIPS):
        first = math.ceil(fps * start)
        last = min(math.ceil(fps * end), n)
        index = np.arange(first, last)
        if index.size == 0:  # past the end (a video shorter than a frame's time): the last frame
            index = np.array([n - 1])
        picked = index[np.linspace(0, index.size - 1, FRAMES_PER_CLIP).astype(np.int64)]
        clip = frames[picked].astype(np.float32).transpose(3, 0, 1, 2) / 255.0  # [C, T, H, W]
        clip = (short_side_scale(clip, size) - mean) / std
        out.extend(spatial_crops(clip, size))
    return np.stack(out).astype(np.float32)


def load_video_inputs(path: Path | str, size: int = SIZE, ffmpeg: str | None = None) -> np.ndarray:
    """`video_inputs` of a video file."""
    frames, fps = read_frames(path, ffmpeg)
    return video_inputs(frames, fps, size)
