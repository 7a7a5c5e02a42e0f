"""The ``semanticodec`` backend: what it asks for when missing, its weight layout, its adapter."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from agac_jax.codec import BackendUnavailableError, CodecClient, check_backend, make_codec
from agac_jax.codec.semanticodec_backend import (
    INSTALL_COMMAND,
    SemantiCodecBackend,
    check_available,
    missing_requirements,
    package_installed,
    rate_directory,
    weight_files,
)

needs_package_absent = pytest.mark.skipif(package_installed(), reason="SemantiCodec is installed here")


def child_pids() -> set[int]:
    """Pids of this process's live children, from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid() and fields[0] != "Z":
                children.add(int(entry.name))
    return children


def make_weights(root: Path, rate: int, vocab: int) -> None:
    for path in weight_files(root, rate, vocab):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_weight_layout_mirrors_the_hub_repository() -> None:
    files = weight_files("/w", 25, 16384)
    assert [str(p) for p in files] == [
        "/w/semanticodec_tokenrate_25/encoder.ckpt",
        "/w/semanticodec_tokenrate_25/decoder.ckpt",
        "/w/semanticodec_tokenrate_25/codebook_idx/combine_128_audioset_dominate/codebook_8192_0.npy",
    ]
    assert weight_files("/w", 100, 4096)[2].parent.name == "combine_512_audioset_dominate"
    with pytest.raises(ValueError, match="semantic_vocab_size"):
        weight_files("/w", 50, 1000)


@needs_package_absent
def test_missing_package_message_says_what_to_install_and_where_weights_go() -> None:
    with pytest.raises(BackendUnavailableError) as caught:
        check_backend("semanticodec", {})
    message = str(caught.value)
    assert INSTALL_COMMAND == "pip install git+https://github.com/haoheliu/SemantiCodec-inference"
    assert INSTALL_COMMAND in message
    assert "the Python package 'semanticodec' is not installed" in message
    assert "weights_dir is not set" in message
    for rate in (25, 50, 100):
        assert f"<weights_dir>/semanticodec_tokenrate_{rate}/encoder.ckpt" in message
    assert "huggingface.co/haoheliu/SemantiCodec" in message


@needs_package_absent
def test_missing_weights_are_listed_file_by_file(tmp_path: Path) -> None:
    with pytest.raises(BackendUnavailableError) as caught:
        make_codec("semanticodec", 50, {"weights_dir": str(tmp_path), "semantic_vocab_size": 8192})
    message = str(caught.value)
    for path in weight_files(tmp_path, 50, 8192):
        assert f"weight file {path} is missing" in message
    make_weights(tmp_path, 50, 8192)
    assert missing_requirements(tmp_path, (50,), 8192) == ["the Python package 'semanticodec' is not installed"]


@needs_package_absent
def test_client_reports_the_missing_package_and_leaves_no_process(tmp_path: Path) -> None:
    before = child_pids()
    with pytest.raises(BackendUnavailableError, match=re.escape(INSTALL_COMMAND)):
        CodecClient(backend="semanticodec", backend_options={"weights_dir": str(tmp_path)}, num_threads=0)
    assert child_pids() <= before


def test_a_non_directory_weights_dir_is_reported(tmp_path: Path) -> None:
    missing = missing_requirements(tmp_path / "nope", (25,), 16384)
    assert f"weights_dir {tmp_path / 'nope'} is not a directory" in missing


FAKE_PACKAGE = textwrap.dedent(
    """
    # Stand-in for SemantiCodec's documented API, used only because the real package and its
    # weights cannot be installed in the test environment.
    import math
    import numpy as np
    import soundfile
    import torch

    calls = []

    class SemantiCodec:
        def __init__(self, token_rate, semantic_vocab_size, ddim_sample_step=50, cfg_scale=2.0,
                     checkpoint_path=None, cache_path="pretrained"):
            self.token_rate = token_rate
            self.device = torch.device("cpu")
            calls.append(("init", token_rate, semantic_vocab_size, checkpoint_path))

        def encode(self, filepath):
            audio, rate = soundfile.read(filepath, dtype="float32")
            calls.append(("encode", filepath, audio, rate))
            seconds = (math.floor(len(audio) / rate / 0.16) + 1) * 0.16
            frames = math.ceil(seconds * self.token_rate / 2)
            return torch.arange(frames * 2).reshape(1, frames, 2)

        def decode(self, tokens):
            samples = tokens.shape[1] * 32000 // self.token_rate
            return np.full((1, 1, samples), 0.5, np.float32)
    """
)


@pytest.fixture
def fake_semanticodec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    package = tmp_path / "site" / "semanticodec"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_PACKAGE)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    weights = tmp_path / "weights"
    make_weights(weights, 50, 16384)
    yield weights
    sys.modules.pop("semanticodec", None)


def test_adapter_passes_a_temporary_wav_and_keeps_the_frame_grid(fake_semanticodec: Path) -> None:
    codec = SemantiCodecBackend(50, weights_dir=fake_semanticodec)
    import semanticodec

    assert semanticodec.calls[0] == ("init", 50, 16384, str(rate_directory(fake_semanticodec, 50)))
    x = np.linspace(-0.5, 0.5, 1300, dtype=np.float32)
    tokens = codec.encode(x)
    assert tokens.shape == (3, 2) and tokens.dtype == np.int64
    _, path, audio, rate = semanticodec.calls[1]
    assert rate == 16000 and not os.path.exists(path)
    np.testing.assert_array_equal(audio, x)
    decoded = codec.decode(tokens)
    assert decoded.shape == (3 * 640,) and decoded.dtype == np.float32
    check_available(fake_semanticodec, (50,))
