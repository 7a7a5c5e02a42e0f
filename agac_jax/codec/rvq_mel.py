"""``rvq_mel``: an offline codec, a two-stage residual vector quantiser over log-mel frames (torch).

Analysis: STFT (n_fft 512, Hann, hop 160 = 10 ms, centred) of the waveform zero-padded to
N * F samples, power normalised so that a full-scale sine has power 1 in its bin, 64 HTK mel bands
(30 Hz to 8 kHz), log10 with a floor of 1e-8. Codec frame i (F = 32000 / r samples) owns the
S = F / 160 STFT columns [i S, (i + 1) S); they are pooled (mean power) into P = min(S, 4)
sub-frames, and the frame's feature is the P sub-frames' log-mel bands, flattened: D = 64 P values.

Quantisation: a beam search over the two stages. For each frame the ``search_width`` (8) nearest
stage-1 codes are tried, each with the stage-2 code nearest to its residual, and the pair with the
smallest total error wins (width 1 is plain greedy residual quantisation). Codebooks come from ``agac_jax/codec/assets/rvq_mel_r{r}.npz``, fitted by
``tools/fit_offline_codec.py``.

Synthesis: the quantised log-mel sub-frames are repeated back to S columns per frame, mapped to a
linear power spectrogram by non-negative least squares (pseudo-inverse start, multiplicative
updates), and given a phase by fast Griffin-Lim (momentum 0.99) from a seeded random start, so
decoding is deterministic. The output has N * F samples.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import torch

from agac_jax.codec.base import (
    SAMPLE_RATE,
    BackendUnavailableError,
    Codec,
    UnsupportedTokenRateError,
    check_token_rate,
    frame_samples,
    num_frames,
    validate_tokens,
    validate_waveform,
)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
N_FFT = 512
HOP = 160
N_MELS = 64
F_MIN = 30.0
F_MAX = SAMPLE_RATE / 2
LOG_FLOOR = 1e-8
MAX_SUBFRAMES = 4


def asset_path(token_rate: int, assets_dir: Path | str | None = None) -> Path:
    """Where the codebooks for ``token_rate`` live."""
    return Path(assets_dir or ASSETS_DIR) / f"rvq_mel_r{check_token_rate(token_rate)}.npz"


def hz_to_mel(hz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale."""
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel: np.ndarray | float) -> np.ndarray:
    """Inverse of ``hz_to_mel``."""
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def mel_filterbank(
    n_mels: int = N_MELS, n_fft: int = N_FFT, f_min: float = F_MIN, f_max: float = F_MAX
) -> np.ndarray:
    """Triangular HTK mel filters (apex 1 at the centre frequency), float32 [n_mels, n_fft // 2 + 1]."""
    bins_hz = np.linspace(0.0, SAMPLE_RATE / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins_hz[None, :] - lower) / (centre - lower)
    falling = (upper - bins_hz[None, :]) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0.0, None).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class MelGrid:
    """The analysis grid of one token rate: S STFT columns per frame pooled into P sub-frames."""

    token_rate: int

    @property
    def frame_samples(self) -> int:
        return frame_samples(self.token_rate)

    @property
    def columns_per_frame(self) -> int:
        """S = frame_samples / hop."""
        return self.frame_samples // HOP

    @property
    def subframes(self) -> int:
        """P = min(S, 4)."""
        return min(self.columns_per_frame, MAX_SUBFRAMES)

    @property
    def feature_dim(self) -> int:
        """D = n_mels * P."""
        return N_MELS * self.subframes


class MelAnalysis:
    """Waveform <-> per-frame log-mel features on one token rate's grid."""

    def __init__(self, token_rate: int, griffin_lim_iters: int = 32, nnls_iters: int = 10, seed: int = 0):
        self.grid = MelGrid(check_token_rate(token_rate))
        if griffin_lim_iters < 1:
            raise ValueError(f"griffin_lim_iters must be >= 1; got {griffin_lim_iters}.")
        if nnls_iters < 0:
            raise ValueError(f"nnls_iters must be >= 0; got {nnls_iters}.")
        self.griffin_lim_iters = griffin_lim_iters
        self.nnls_iters = nnls_iters
        self.seed = seed
        self.window = torch.hann_window(N_FFT, dtype=torch.float32)
        self.scale = float(self.window.sum()) / 2.0
        self.filters = torch.from_numpy(mel_filterbank())
        self.filters_pinv = torch.linalg.pinv(self.filters)

    def _stft(self, x: torch.Tensor) -> torch.Tensor:
        """x [samples] -> complex [bins, columns], centred."""
        return torch.stft(x, N_FFT, HOP, window=self.window, center=True, return_complex=True)

    def _istft(self, spec: torch.Tensor, length: int) -> torch.Tensor:
        return torch.istft(spec, N_FFT, HOP, window=self.window, center=True, length=length)

    def log_mel_columns(self, waveform: np.ndarray) -> torch.Tensor:
        """float32 [n] -> log10 mel power [N * S, n_mels] of the waveform padded to N frames."""
        n_frames = num_frames(waveform.size, self.grid.token_rate)
        padded = np.zeros(n_frames * self.grid.frame_samples, dtype=np.float32)
        padded[: waveform.size] = waveform
        spec = self._stft(torch.from_numpy(padded))[:, : n_frames * self.grid.columns_per_frame]
        power = spec.abs().square() / self.scale**2
        mel = self.filters @ power
        return torch.log10(mel.clamp_min(LOG_FLOOR)).T

    def features(self, waveform: np.ndarray) -> torch.Tensor:
        """float32 [n] -> frame features [N, D]: per frame, P pooled sub-frames of log-mel bands."""
        columns = self.log_mel_columns(waveform)
        grid = self.grid
        pool = grid.columns_per_frame // grid.subframes
        power = torch.pow(10.0, columns).reshape(-1, pool, N_MELS).mean(dim=1)
        pooled = torch.log10(power.clamp_min(LOG_FLOOR))
        return pooled.reshape(-1, grid.feature_dim)

    def mel_power_columns(self, features: torch.Tensor) -> torch.Tensor:
        """Frame features [N, D] -> mel power [n_mels, N * S], each sub-frame repeated over its columns."""
        grid = self.grid
        sub = features.reshape(-1, N_MELS)
        repeated = sub.repeat_interleave(grid.columns_per_frame // grid.subframes, dim=0)
        return torch.pow(10.0, repeated).T

    def linear_power(self, mel_power: torch.Tensor) -> torch.Tensor:
        """Mel power [n_mels, C] -> non-negative linear power [bins, C] with filters @ out ~ mel_power."""
        power = (self.filters_pinv @ mel_power).clamp_min(LOG_FLOOR)
        for _ in range(self.nnls_iters):
            power = power * (self.filters.T @ mel_power) / (self.filters.T @ (self.filters @ power) + LOG_FLOOR)
        return power

    def griffin_lim(self, magnitude: torch.Tensor, length: int) -> torch.Tensor:
        """Magnitude [bins, C] -> waveform [length] by fast Griffin-Lim from a seeded random phase."""
        generator = torch.Generator().manual_seed(self.seed)
        angles = torch.exp(2j * torch.pi * torch.rand(magnitude.shape, generator=generator))
        previous = torch.zeros_like(angles)
        momentum = 0.99 / 1.99
        for _ in range(self.griffin_lim_iters):
            rebuilt = self._stft(self._istft(magnitude * angles, length))
            angles = rebuilt - momentum * previous
            angles = angles / (angles.abs() + 1e-16)
            previous = rebuilt
        return self._istft(magnitude * angles, length)

    def synthesize(self, features: torch.Tensor) -> np.ndarray:
        """Frame features [N, D] -> float32 waveform [N * F]."""
        n_frames = features.shape[0]
        power = self.linear_power(self.mel_power_columns(features))
        magnitude = power.sqrt() * self.scale
        magnitude = torch.cat([magnitude, magnitude[:, -1:]], dim=1)
        waveform = self.griffin_lim(magnitude, n_frames * self.grid.frame_samples)
        return waveform.numpy().astype(np.float32)


def squared_distances(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Squared L2 distances [M, K] between vectors [M, D] and the rows of codebook [K, D]."""
    return (
        vectors.square().sum(dim=1, keepdim=True)
        - 2.0 * vectors @ codebook.T
        + codebook.square().sum(dim=1)[None, :]
    )


def nearest_code(vectors: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Index [M] of the nearest row of codebook [K, D] to each of vectors [M, D]."""
    return squared_distances(vectors, codebook).argmin(dim=1)


def nearest_codes(vectors: torch.Tensor, codebook: torch.Tensor, count: int) -> torch.Tensor:
    """Indices [M, count] of the ``count`` nearest rows of codebook [K, D], nearest first."""
    return squared_distances(vectors, codebook).topk(count, dim=1, largest=False).indices


def load_codebooks(token_rate: int, assets_dir: Path | str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The two stage codebooks, float32 [K1, D] and [K2, D], checked against the rate's grid."""
    path = asset_path(token_rate, assets_dir)
    if not path.is_file():
        raise UnsupportedTokenRateError(
            f"rvq_mel has no codebooks for token_rate {token_rate}: {path} is missing. "
            "Fit them with: python tools/fit_offline_codec.py"
        )
    with np.load(path) as data:
        stage1, stage2 = data["stage1"].astype(np.float32), data["stage2"].astype(np.float32)
        stored_rate = int(data["token_rate"])
    expected = MelGrid(token_rate).feature_dim
    if stored_rate != token_rate or stage1.shape[1] != expected or stage2.shape[1] != expected:
        raise BackendUnavailableError(
            f"{path} does not match token_rate {token_rate} (stored rate {stored_rate}, feature dims "
            f"{stage1.shape[1]}/{stage2.shape[1]}, expected {expected}); refit with tools/fit_offline_codec.py."
        )
    return stage1, stage2


class RvqMelCodec(Codec):
    """Two-stage RVQ of log-mel frames with a Griffin-Lim decoder; see the module docstring."""

    def __init__(
        self,
        token_rate: int,
        assets_dir: Path | str | None = None,
        griffin_lim_iters: int = 32,
        seed: int = 0,
        search_width: int = 8,
    ):
        self.token_rate = check_token_rate(token_rate)
        if search_width < 1:
            raise ValueError(f"search_width must be >= 1; got {search_width}.")
        stage1, stage2 = load_codebooks(self.token_rate, assets_dir)
        self.search_width = min(search_width, stage1.shape[0])
        self.codebooks = (torch.from_numpy(stage1), torch.from_numpy(stage2))
        self.analysis = MelAnalysis(self.token_rate, griffin_lim_iters=griffin_lim_iters, seed=seed)

    @property
    def codebook_sizes(self) -> tuple[int, int]:
        """(K1, K2): the vocabulary of token 0 and of token 1."""
        return (self.codebooks[0].shape[0], self.codebooks[1].shape[0])

    def quantize(self, features: torch.Tensor) -> torch.Tensor:
        """Features [N, D] -> tokens int64 [N, 2] by the beam search of the module docstring."""
        stage1, stage2 = self.codebooks
        candidates = nearest_codes(features, stage1, self.search_width)
        residuals = features[:, None, :] - stage1[candidates]
        seconds = nearest_code(residuals.reshape(-1, residuals.shape[-1]), stage2).reshape(candidates.shape)
        errors = (residuals - stage2[seconds]).square().sum(dim=-1)
        best = errors.argmin(dim=1, keepdim=True)
        return torch.cat([candidates.gather(1, best), seconds.gather(1, best)], dim=1)

    def dequantize(self, tokens: np.ndarray) -> torch.Tensor:
        """Tokens [N, 2] -> features [N, D]."""
        for stage, size in enumerate(self.codebook_sizes):
            column = tokens[:, stage]
            if column.min() < 0 or column.max() >= size:
                raise ValueError(
                    f"tokens[:, {stage}] must lie in [0, {size}); got range [{column.min()}, {column.max()}]."
                )
        index = torch.from_numpy(tokens)
        return self.codebooks[0][index[:, 0]] + self.codebooks[1][index[:, 1]]

    @torch.no_grad()
    def encode(self, waveform: np.ndarray) -> np.ndarray:
        """float32 [n] -> int64 [ceil(n / F), 2]."""
        waveform = validate_waveform(waveform, "waveform", max_seconds=float("inf"))
        return self.quantize(self.analysis.features(waveform)).numpy()

    @torch.no_grad()
    def decode(self, tokens: np.ndarray, seed: int | None = None) -> np.ndarray:
        """int [N, 2] -> float32 [N * F]. Deterministic: ``seed`` is ignored (Griffin-Lim's initial
        phase is the backend option ``seed``, fixed per codec)."""
        return self.analysis.synthesize(self.dequantize(validate_tokens(tokens)))
