"""``semanticodec``: the real SemantiCodec (https://github.com/haoheliu/SemantiCodec-inference).

The package is installed by the user and its weights are read from a local directory, never
downloaded. ``weights_dir`` mirrors the Hugging Face repository ``haoheliu/SemantiCodec``, one
folder per token rate, each holding the semantic codebook too:

    <weights_dir>/semanticodec_tokenrate_<r>/encoder.ckpt
    <weights_dir>/semanticodec_tokenrate_<r>/decoder.ckpt
    <weights_dir>/semanticodec_tokenrate_<r>/codebook_idx/combine_<c>_audioset_dominate/codebook_<v/2>_0.npy

with c = 128, 256, 512 for r = 25, 50, 100 and v the semantic vocabulary size.

SemantiCodec's ``encode`` reads a file: the waveform goes through a temporary float WAV that is
removed afterwards. It returns at least ceil(n / F) frames (it pads to 0.16 s patches); the extra
frames are dropped so that the backend keeps the shared frame grid.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import soundfile

from agac_jax.codec.base import (
    SAMPLE_RATE,
    BackendUnavailableError,
    Codec,
    check_token_rate,
    num_frames,
    validate_tokens,
    validate_waveform,
)

PACKAGE = "semanticodec"
INSTALL_COMMAND = "pip install git+https://github.com/haoheliu/SemantiCodec-inference"
WEIGHTS_SOURCE = "https://huggingface.co/haoheliu/SemantiCodec"
SEMANTIC_VOCAB_SIZES = (4096, 8192, 16384, 32768)
DEFAULT_SEMANTIC_VOCAB_SIZE = 16384
_COMBINE = {25: 128, 50: 256, 100: 512}


def check_semantic_vocab_size(semantic_vocab_size: int) -> int:
    """The vocabulary size, or ValueError naming the allowed ones."""
    if semantic_vocab_size not in SEMANTIC_VOCAB_SIZES:
        raise ValueError(
            f"semantic_vocab_size must be one of {SEMANTIC_VOCAB_SIZES}; got {semantic_vocab_size!r}."
        )
    return int(semantic_vocab_size)


def rate_directory(weights_dir: Path | str, token_rate: int) -> Path:
    """<weights_dir>/semanticodec_tokenrate_<r>, the ``checkpoint_path`` given to SemantiCodec."""
    return Path(weights_dir) / f"semanticodec_tokenrate_{check_token_rate(token_rate)}"


def weight_files(weights_dir: Path | str, token_rate: int, semantic_vocab_size: int) -> list[Path]:
    """The three files SemantiCodec reads for one rate and vocabulary size."""
    folder = rate_directory(weights_dir, token_rate)
    codebook = (
        folder
        / "codebook_idx"
        / f"combine_{_COMBINE[token_rate]}_audioset_dominate"
        / f"codebook_{check_semantic_vocab_size(semantic_vocab_size) // 2}_0.npy"
    )
    return [folder / "encoder.ckpt", folder / "decoder.ckpt", codebook]


def setup_instructions(token_rates: tuple[int, ...], semantic_vocab_size: int) -> str:
    """What to install and where the weights go, for the error messages."""
    layout = "\n".join(
        f"    {path}"
        for rate in token_rates
        for path in weight_files("<weights_dir>", rate, semantic_vocab_size)
    )
    return (
        "To use the semanticodec backend:\n"
        f"  1. install the package into {sys.executable}:\n"
        f"       {INSTALL_COMMAND}\n"
        f"  2. copy its weights from {WEIGHTS_SOURCE} into a local directory laid out as\n"
        f"{layout}\n"
        "  3. pass that directory as backend option weights_dir "
        "(CodecClient(backend='semanticodec', backend_options={'weights_dir': ...}))."
    )


def package_installed() -> bool:
    """Whether ``import semanticodec`` can succeed in this interpreter."""
    return importlib.util.find_spec(PACKAGE) is not None


def missing_requirements(
    weights_dir: Path | str | None, token_rates: tuple[int, ...], semantic_vocab_size: int
) -> list[str]:
    """Human-readable list of what is missing: the package, the directory, or weight files."""
    missing = []
    if not package_installed():
        missing.append(f"the Python package '{PACKAGE}' is not installed")
    if weights_dir is None:
        missing.append("backend option weights_dir is not set")
    elif not Path(weights_dir).is_dir():
        missing.append(f"weights_dir {weights_dir} is not a directory")
    else:
        for rate in token_rates:
            files = weight_files(weights_dir, rate, semantic_vocab_size)
            missing += [f"weight file {path} is missing" for path in files if not path.is_file()]
    return missing


def check_available(
    weights_dir: Path | str | None,
    token_rates: tuple[int, ...] = (),
    semantic_vocab_size: int = DEFAULT_SEMANTIC_VOCAB_SIZE,
) -> None:
    """Raises BackendUnavailableError listing what is missing and exactly how to fix it.

    With no ``token_rates``, checks the package and that ``weights_dir`` is a directory; with rates,
    also each rate's weight files.
    """
    check_semantic_vocab_size(semantic_vocab_size)
    token_rates = tuple(check_token_rate(rate) for rate in token_rates)
    missing = missing_requirements(weights_dir, token_rates, semantic_vocab_size)
    if missing:
        shown_rates = token_rates or tuple(_COMBINE)
        raise BackendUnavailableError(
            "The semanticodec backend cannot run: "
            + "; ".join(missing)
            + ".\n"
            + setup_instructions(tuple(shown_rates), semantic_vocab_size)
        )


def _as_numpy(array: object) -> np.ndarray:
    """A torch tensor or array-like as a numpy array (on the host)."""
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    return np.asarray(array)


class SemantiCodecBackend(Codec):
    """SemantiCodec behind the shared interface; see the module docstring for the weight layout."""

    def __init__(
        self,
        token_rate: int,
        weights_dir: Path | str | None = None,
        semantic_vocab_size: int = DEFAULT_SEMANTIC_VOCAB_SIZE,
        ddim_sample_step: int = 50,
        cfg_scale: float = 2.0,
    ):
        self.token_rate = check_token_rate(token_rate)
        check_available(weights_dir, (self.token_rate,), semantic_vocab_size)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import semanticodec

        self.model = semanticodec.SemantiCodec(
            token_rate=self.token_rate,
            semantic_vocab_size=semantic_vocab_size,
            ddim_sample_step=ddim_sample_step,
            cfg_scale=cfg_scale,
            checkpoint_path=str(rate_directory(weights_dir, self.token_rate)),
        )

    def encode(self, waveform: np.ndarray) -> np.ndarray:
        """float32 [n] -> int64 [ceil(n / F), 2], through a temporary WAV file."""
        validate_waveform(waveform)
        handle, path = tempfile.mkstemp(prefix="agac_codec_", suffix=".wav")
        os.close(handle)
        try:
            soundfile.write(path, waveform, SAMPLE_RATE, subtype="FLOAT")
            tokens = _as_numpy(self.model.encode(path))
        finally:
            os.remove(path)
        tokens = tokens.reshape(-1, tokens.shape[-1]) if tokens.ndim == 3 else tokens
        expected = num_frames(waveform.size, self.token_rate)
        if tokens.ndim != 2 or tokens.shape[0] < expected or tokens.shape[1] != 2:
            raise RuntimeError(
                f"SemantiCodec returned tokens of shape {tokens.shape} for {waveform.size} samples; "
                f"expected at least [{expected}, 2]."
            )
        return tokens[:expected].astype(np.int64)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """int [N, 2] -> float32 [N * F], trimmed or zero-padded to the frame grid."""
        import torch

        tokens = validate_tokens(tokens)
        batch = torch.from_numpy(tokens)[None].to(self.model.device)
        with torch.no_grad():
            decoded = _as_numpy(self.model.decode(batch)).reshape(-1).astype(np.float32)
        length = tokens.shape[0] * self.frame_samples
        out = np.zeros(length, dtype=np.float32)
        out[: min(length, decoded.size)] = decoded[:length]
        return out
