"""Kept codec frames -> one joined waveform (DESIGN.md section 3), numpy only.

Frame i of a clip of n samples covers samples [i F, min((i + 1) F, n)) with F = frame_samples(r)
(`frame_bounds`).
The kept frames are grouped into runs of consecutive indices and the runs are concatenated in time
order, so the joined waveform has exactly the kept frames' total length and a codec encodes it to
exactly k frames.

Crossfade at each cut. Where run A (ending at sample a) is followed by run B (starting at sample b),
the joined output around the junction is a raised-cosine blend over 2 h samples centred on the cut:

    out[p + t] = w(t) x[a + t] + (1 - w(t)) x[b + t],    t in [-h, h),
    w(t) = 0.5 (1 + cos(pi (t + h + 0.5) / (2 h))),

where p is the junction's position in the output. Both terms are true samples of the clip (the
dropped audio just after A and just before B), so the blend keeps the length, never dips to zero
and removes the step at the cut. The default total length 2 h is 5 ms (80 samples); h is shortened
where a run is shorter than h (only a clipped last frame can be).
"""

from __future__ import annotations

import numpy as np

from agac_jax.codec.base import SAMPLE_RATE, frame_samples, num_frames, validate_waveform

DEFAULT_CROSSFADE_MS = 5.0


def validate_kept_frames(kept_frames: object, n_frames: int, name: str = "kept_frames") -> np.ndarray:
    """Kept frame indices as int64 [k]: 1-D integers, non-empty, strictly increasing, in [0, n_frames).

    Raises TypeError for a non-integer array and ValueError naming ``name`` otherwise.
    """
    if not isinstance(kept_frames, np.ndarray):
        raise TypeError(f"{name} must be a numpy integer array; got {type(kept_frames).__name__}.")
    if not np.issubdtype(kept_frames.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype; got {kept_frames.dtype}.")
    if kept_frames.ndim != 1:
        raise ValueError(f"{name} must be 1-D; got shape {kept_frames.shape}.")
    if kept_frames.size == 0:
        raise ValueError(f"{name} is empty; keep at least one frame.")
    indices = kept_frames.astype(np.int64)
    out_of_range = indices[(indices < 0) | (indices >= n_frames)]
    if out_of_range.size:
        raise ValueError(
            f"{name} has indices outside [0, {n_frames}) for a clip of {n_frames} frames: "
            f"{out_of_range[:8].tolist()}."
        )
    steps = np.diff(indices)
    if np.any(steps == 0):
        raise ValueError(f"{name} has duplicated indices: {np.unique(indices[1:][steps == 0])[:8].tolist()}.")
    if np.any(steps < 0):
        raise ValueError(f"{name} must be sorted in increasing (time) order.")
    return indices


def frame_bounds(num_samples: int, token_rate: int) -> np.ndarray:
    """Sample bounds [start, end) of each frame of the codec grid, the last clipped to the clip's end:
    int64 [num_frames, 2]."""
    if not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    frame = frame_samples(token_rate)
    starts = np.arange(num_frames(num_samples, token_rate), dtype=np.int64) * frame
    return np.stack([starts, np.minimum(starts + frame, num_samples)], axis=1)


def kept_runs(kept_frames: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs of consecutive indices as half-open (first, stop) frame ranges, in order."""
    breaks = np.flatnonzero(np.diff(kept_frames) != 1) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [kept_frames.size]])
    return [(int(kept_frames[s]), int(kept_frames[e - 1]) + 1) for s, e in zip(starts, stops)]


def raised_cosine_fade_out(length: int) -> np.ndarray:
    """w [length], from near 1 down to near 0, with w[i] + w[length - 1 - i] = 1."""
    t = (np.arange(length, dtype=np.float64) + 0.5) / length
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def join_frames(
    waveform: np.ndarray,
    kept_frames: np.ndarray,
    token_rate: int,
    crossfade_ms: float = DEFAULT_CROSSFADE_MS,
) -> np.ndarray:
    """Joins the kept frames of ``waveform`` in time order, crossfading at each cut.

    Args:
      waveform: float32 [n], 16 kHz.
      kept_frames: int [k], strictly increasing indices in [0, ceil(n / F)).
      token_rate: codec token rate r; F = 32000 / r samples per frame.
      crossfade_ms: total crossfade length at each cut (see the module docstring); 0 concatenates.

    Returns:
      float32 [m] with m = sum of the kept frames' lengths, so ceil(m / F) = k.
    """
    waveform = validate_waveform(waveform, "waveform", max_seconds=float("inf"))
    if not np.isfinite(crossfade_ms) or crossfade_ms < 0:
        raise ValueError(f"crossfade_ms must be finite and >= 0; got {crossfade_ms}.")
    size = frame_samples(token_rate)
    n = waveform.size
    indices = validate_kept_frames(kept_frames, num_frames(n, token_rate))
    runs = [(first * size, min(stop * size, n)) for first, stop in kept_runs(indices)]
    joined = np.concatenate([waveform[start:stop] for start, stop in runs])
    half = int(round(crossfade_ms * SAMPLE_RATE / 1000.0)) // 2
    if half == 0:
        return joined
    position = 0
    for (a_start, a_stop), (b_start, b_stop) in zip(runs[:-1], runs[1:]):
        position += a_stop - a_start
        h = min(half, a_stop - a_start, b_stop - b_start)
        fade = raised_cosine_fade_out(2 * h)
        joined[position - h : position + h] = (
            fade * waveform[a_stop - h : a_stop + h] + (1.0 - fade) * waveform[b_start - h : b_start + h]
        )
    return joined
