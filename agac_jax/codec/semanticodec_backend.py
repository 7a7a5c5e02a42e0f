"""``semanticodec``: the real SemantiCodec (https://github.com/haoheliu/SemantiCodec-inference).

**Environment.** The package needs torchaudio and timm (so torchvision), which do not load against
the project's torch; it runs in its own interpreter, made by ``bash tools/setup_codec_env.sh``
(``.venv-codec``: torch 2.11.0, torchaudio 2.11.0, torchvision 0.26.0, the package with
``--no-deps``), and the sidecar is started there with ``codec.python = ".venv-codec/bin/python"``.

**Weights.** Read from a local directory, never downloaded. ``weights_dir`` is a snapshot of the
Hugging Face repository haoheliu/SemantiCodec as downloaded (``huggingface-cli download
haoheliu/SemantiCodec --local-dir <weights_dir>``); for rate r and vocabulary size v it reads

    <weights_dir>/semanticodec_tokenrate_<r>/encoder.ckpt
    <weights_dir>/semanticodec_tokenrate_<r>/decoder.ckpt
    <weights_dir>/codebook_idx/combine_<c>_audioset_dominate/codebook_<v/2>_0.npy

with c = 128, 256, 512 for r = 25, 50, 100. (The package itself, given ``checkpoint_path``, looks for
``codebook_idx/`` inside the rate folder; a codebook found there is accepted too.) The package is
handed a temporary folder of symbolic links in its own layout, removed once it has loaded.

**Tokens.** AudioMAE cuts each 10.24 s of log-mel (1024 x 128) into 64 (time) x 8 (frequency)
patches of 0.16 s, flattened time-major. At r = 100 a token pair (semantic, acoustic) is one patch:
8 consecutive pairs are the 8 frequency bands of one 0.16 s step. At r = 50 neighbouring bands are
concatenated (4 pairs per 0.16 s), at r = 25 2 x 2 blocks (4 pairs per 0.32 s). A pair is one frame
of the shared grid (2 / r s), so the codec spends whole groups of ``patch_frames(r)`` frames:
``spent_frames(n, r) = ceil(n / patch_samples(r)) * patch_frames(r)`` (>= ceil(n / F)); encode
returns exactly those, decode takes only whole groups and the decoded audio is cut to n samples.
The 10.24 s window holds 512, 256, 128 pairs, a multiple of every group.

**Input.** ``encode`` builds the package's input in memory by its own rules (``SemantiCodec.load_audio``
without the file: pad to whole 10.24 s segments, ``semanticodec.utils.extract_kaldi_fbank_feature``
at 1024 mel frames per segment), so no ``torchaudio.load`` (which needs torchcodec) and no file.

**Device.** ``device`` ("cpu" by default, or "cuda", "cuda:<k>"): the model, the semantic codebook
(a plain tensor that ``.to`` does not move) and the package's device attributes all go there. The
sidecar also hides every other GPU from the process (``CUDA_VISIBLE_DEVICES``) before torch loads, so
the codec never allocates on the GPU that JAX holds (cuda:0 unless told otherwise).

**Seeds.** The diffusion decoder samples noise; ``decode(tokens, seed=s)`` calls
``torch.manual_seed(s)`` first, so one seed's pass is reproducible and seeds differ.

**Memory.** One model per rate, loaded when a request first asks for it (``CodecService``); with
random weights on CPU the sidecar's peak resident memory was 5.2 GiB at r = 100 (see
``bench/results/codec_semanticodec_cpu_2cores.json``); r = 25's residual LSTM alone has ~1.5B
parameters (6 GB in float32). ``max_loaded_rates`` (sidecar option) bounds how many stay loaded.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np

from agac_jax.codec.base import (
    BackendUnavailableError,
    Codec,
    check_token_rate,
    frame_samples,
    validate_tokens,
    validate_waveform,
)

PACKAGE = "semanticodec"
SETUP_COMMAND = "bash tools/setup_codec_env.sh"
CODEC_PYTHON = ".venv-codec/bin/python"
INSTALL_COMMAND = "pip install --no-deps git+https://github.com/haoheliu/SemantiCodec-inference"
WEIGHTS_SOURCE = "https://huggingface.co/haoheliu/SemantiCodec"
DOWNLOAD_COMMAND = "huggingface-cli download haoheliu/SemantiCodec --local-dir <weights_dir>"
SEMANTIC_VOCAB_SIZES = (4096, 8192, 16384, 32768)
DEFAULT_SEMANTIC_VOCAB_SIZE = 16384
_COMBINE = {25: 128, 50: 256, 100: 512}
_PATCH_FRAMES = {100: 8, 50: 4, 25: 4}  # token pairs (frames) per AudioMAE patch group
ACOUSTIC_VOCAB_SIZE = 8192  # the package's residual quantizer (AudioMAEConditionQuantResEncoder default)


def check_semantic_vocab_size(semantic_vocab_size: int) -> int:
    """The vocabulary size, or ValueError naming the allowed ones."""
    if semantic_vocab_size not in SEMANTIC_VOCAB_SIZES:
        raise ValueError(
            f"semantic_vocab_size must be one of {SEMANTIC_VOCAB_SIZES}; got {semantic_vocab_size!r}."
        )
    return int(semantic_vocab_size)


def check_weights_dir(weights_dir: Path | str | None) -> Path | None:
    """``weights_dir`` as a Path; None (or "", the configs' placeholder) means not set."""
    if weights_dir is None or (isinstance(weights_dir, str) and not weights_dir.strip()):
        return None
    return Path(weights_dir)


def check_device(device: str) -> str:
    """"cpu", "cuda" or "cuda:<k>"; ValueError otherwise."""
    if not isinstance(device, str) or not (
        device in ("cpu", "cuda") or (device.startswith("cuda:") and device[5:].isdigit())
    ):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<index>'; got {device!r}.")
    return device


def patch_frames(token_rate: int) -> int:
    """Frames (token pairs) per AudioMAE patch group: 8, 4, 4 at r = 100, 50, 25."""
    return _PATCH_FRAMES[check_token_rate(token_rate)]


def patch_samples(token_rate: int) -> int:
    """Samples per patch group: 2560 (0.16 s) at r = 100 and 50, 5120 (0.32 s) at r = 25."""
    return patch_frames(token_rate) * frame_samples(token_rate)


def spent_frames(num_samples: int, token_rate: int) -> int:
    """Frames SemantiCodec spends on ``num_samples`` samples: whole patch groups."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1; got {num_samples}.")
    return math.ceil(num_samples / patch_samples(token_rate)) * patch_frames(token_rate)


def rate_directory(weights_dir: Path | str, token_rate: int) -> Path:
    """<weights_dir>/semanticodec_tokenrate_<r>: the encoder and decoder checkpoints."""
    return Path(weights_dir) / f"semanticodec_tokenrate_{check_token_rate(token_rate)}"


def codebook_file(weights_dir: Path | str, token_rate: int, semantic_vocab_size: int) -> Path:
    """<weights_dir>/codebook_idx/combine_<c>_audioset_dominate/codebook_<v/2>_0.npy (hub layout)."""
    return _codebook_under(Path(weights_dir), token_rate, semantic_vocab_size)


def _codebook_under(root: Path, token_rate: int, semantic_vocab_size: int) -> Path:
    return (
        root
        / "codebook_idx"
        / f"combine_{_COMBINE[check_token_rate(token_rate)]}_audioset_dominate"
        / f"codebook_{check_semantic_vocab_size(semantic_vocab_size) // 2}_0.npy"
    )


def weight_files(weights_dir: Path | str, token_rate: int, semantic_vocab_size: int) -> list[Path]:
    """The three files read for one rate and vocabulary size: encoder, decoder, semantic codebook.

    The codebook is the hub's (``codebook_file``) unless only the package's own layout has it
    (inside the rate folder).
    """
    folder = rate_directory(weights_dir, token_rate)
    codebook = codebook_file(weights_dir, token_rate, semantic_vocab_size)
    inside = _codebook_under(folder, token_rate, semantic_vocab_size)
    if not codebook.is_file() and inside.is_file():
        codebook = inside
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
        f"  1. create its environment (from the repository root): {SETUP_COMMAND}\n"
        f"     and run the sidecar there: codec.python = '{CODEC_PYTHON}' (CodecClient(python=...));\n"
        f"     elsewhere: {INSTALL_COMMAND} into an interpreter with torch, torchaudio and timm\n"
        f"     (this sidecar runs {sys.executable}).\n"
        f"  2. download {WEIGHTS_SOURCE} as it is ({DOWNLOAD_COMMAND}); it must hold\n"
        f"{layout}\n"
        "  3. give that directory as backend option weights_dir "
        "(codec.options.weights_dir; CodecClient(backend_options={'weights_dir': ...}))."
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
        missing.append(f"the Python package '{PACKAGE}' is not installed in {sys.executable}")
    root = check_weights_dir(weights_dir)
    if root is None:
        missing.append("backend option weights_dir is not set")
    elif not root.is_dir():
        missing.append(f"weights_dir {root} is not a directory")
    else:
        for rate in token_rates:
            files = weight_files(root, rate, semantic_vocab_size)
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


@contextlib.contextmanager
def package_layout(weights_dir: Path, token_rate: int, semantic_vocab_size: int) -> Iterator[Path]:
    """A temporary ``checkpoint_path`` in the package's layout, linking to the hub snapshot's files."""
    encoder, decoder, codebook = weight_files(weights_dir, token_rate, semantic_vocab_size)
    with tempfile.TemporaryDirectory(prefix="agac_semanticodec_") as staging:
        root = Path(staging)
        links = {
            root / "encoder.ckpt": encoder,
            root / "decoder.ckpt": decoder,
            _codebook_under(root, token_rate, semantic_vocab_size): codebook,
        }
        for link, target in links.items():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target.resolve())
        yield root


class SemantiCodecBackend(Codec):
    """SemantiCodec behind the shared interface; see the module docstring."""

    def __init__(
        self,
        token_rate: int,
        weights_dir: Path | str | None = None,
        semantic_vocab_size: int = DEFAULT_SEMANTIC_VOCAB_SIZE,
        ddim_sample_step: int = 50,
        cfg_scale: float = 2.0,
        device: str = "cpu",
    ):
        self.token_rate = check_token_rate(token_rate)
        self.device_name = check_device(device)
        if not isinstance(ddim_sample_step, int) or ddim_sample_step < 1:
            raise ValueError(f"ddim_sample_step must be an int >= 1; got {ddim_sample_step!r}.")
        check_available(weights_dir, (self.token_rate,), semantic_vocab_size)
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import semanticodec
        import torch

        self.device = torch.device(self.device_name)
        with package_layout(check_weights_dir(weights_dir), self.token_rate, semantic_vocab_size) as path:
            model = semanticodec.SemantiCodec(
                token_rate=self.token_rate,
                semantic_vocab_size=semantic_vocab_size,
                ddim_sample_step=ddim_sample_step,
                cfg_scale=cfg_scale,
                checkpoint_path=str(path),
            )
        self.model = self._place(model, self.device)
        self.semantic_vocab_size = int(model.encoder.centroid_npy.shape[0])
        self.acoustic_vocab_size = int(model.encoder.codebook_size)

    @staticmethod
    def _place(model, device):
        """Everything the package keeps on a device, on ``device``: the modules, the semantic
        codebook (a plain tensor) and the ``device`` attributes that its code reads."""
        model.eval()
        model.to(device)
        model.device = device
        model.encoder.device = device
        model.encoder.centroid_npy = model.encoder.centroid_npy.to(device)
        model.decoder.device = device
        return model

    def spent_frames(self, num_samples: int) -> int:
        """Frames the codec spends on ``num_samples`` samples: whole patch groups."""
        return spent_frames(num_samples, self.token_rate)

    def input_features(self, waveform: np.ndarray):
        """The log-mel batch [1, 1024 * segments, 128] that ``SemantiCodec.encode`` feeds its
        encoder: ``load_audio``'s padding and features, without the file."""
        import torch
        from semanticodec.main import MEL_TARGET_LENGTH, SAMPLE_RATE, SEGMENT_DURATION
        from semanticodec.utils import extract_kaldi_fbank_feature

        audio = torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32))[None]
        segment = int(SAMPLE_RATE * SEGMENT_DURATION)
        # load_audio pads by segment - n % segment, a whole extra segment when n is a multiple.
        audio = torch.cat([audio, torch.zeros(1, int(segment - audio.shape[1] % segment))], dim=1)
        target = MEL_TARGET_LENGTH * int(audio.shape[1] / segment)
        mel = extract_kaldi_fbank_feature(audio, SAMPLE_RATE, target_length=target)["ta_kaldi_fbank"]
        return mel.unsqueeze(0).squeeze(1)

    def encode(self, waveform: np.ndarray) -> np.ndarray:
        """float32 [n] -> int64 [spent_frames(n), 2]: whole patch groups, (semantic, acoustic)."""
        import torch

        validate_waveform(waveform, "waveform")
        with torch.no_grad():
            tokens = self.model.encoder(self.input_features(waveform).to(self.device))
        tokens = tokens.detach().cpu().numpy()
        spent = self.spent_frames(waveform.size)
        if tokens.ndim != 3 or tokens.shape[0] != 1 or tokens.shape[1] < spent or tokens.shape[2] != 2:
            raise RuntimeError(
                f"SemantiCodec's encoder returned tokens of shape {tokens.shape} for {waveform.size} "
                f"samples; expected [1, >= {spent}, 2]."
            )
        return tokens[0, :spent].astype(np.int64)

    def check_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """int [N, 2] with N a multiple of the patch group, semantic ids < the codebook's rows and
        acoustic ids < the quantizer's size; ValueError naming the offending values otherwise."""
        tokens = validate_tokens(tokens)
        group = patch_frames(self.token_rate)
        if tokens.shape[0] % group:
            raise ValueError(
                f"SemantiCodec at r = {self.token_rate} decodes whole AudioMAE patches of {group} token "
                f"pairs; got {tokens.shape[0]} pairs (encode returns whole patches)."
            )
        for column, name, size in ((0, "semantic", self.semantic_vocab_size), (1, "acoustic", self.acoustic_vocab_size)):
            values = tokens[:, column]
            bad = (values < 0) | (values >= size)
            if bad.any():
                raise ValueError(
                    f"{int(bad.sum())} {name} tokens are outside [0, {size}) (first: {int(values[bad][0])} "
                    f"at pair {int(np.flatnonzero(bad)[0])})."
                )
        return tokens

    def decode(self, tokens: np.ndarray, seed: int | None = None) -> np.ndarray:
        """int [N, 2] -> float32 [N * F]; ``seed`` seeds torch before the diffusion sampler."""
        import torch

        tokens = self.check_tokens(tokens)
        if seed is not None:
            torch.manual_seed(int(seed))
        batch = torch.from_numpy(tokens)[None].to(self.device)
        with torch.no_grad():
            decoded = self.model.decode(batch)
        decoded = np.asarray(decoded.detach().cpu().numpy() if hasattr(decoded, "detach") else decoded)
        decoded = decoded.reshape(-1).astype(np.float32)
        length = tokens.shape[0] * self.frame_samples
        out = np.zeros(length, dtype=np.float32)
        out[: min(length, decoded.size)] = decoded[:length]
        return out
