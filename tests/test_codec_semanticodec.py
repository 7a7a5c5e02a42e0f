"""The ``semanticodec`` backend without its package: what it asks for when missing, its weight layout,
its token arithmetic, the device isolation and the backend table. The real package is exercised in
``test_codec_semanticodec_real.py``."""

from __future__ import annotations

import configparser
import os
import re
from pathlib import Path

import numpy as np
import pytest

from agac_jax.codec import BackendUnavailableError, CodecClient, check_backend, make_codec, num_frames
from agac_jax.codec.backends import BACKEND_NAMES, BACKENDS, check_options
from agac_jax.codec.semanticodec_backend import (
    SETUP_COMMAND,
    check_available,
    missing_requirements,
    package_installed,
    patch_frames,
    patch_samples,
    spent_frames,
    weight_files,
)
from agac_jax.codec.sidecar import isolate_device

REPO = Path(__file__).resolve().parents[1]

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


def test_weight_layout_is_the_hub_snapshot_with_codebook_idx_at_its_root() -> None:
    files = weight_files("/w", 25, 16384)
    assert [str(p) for p in files] == [
        "/w/semanticodec_tokenrate_25/encoder.ckpt",
        "/w/semanticodec_tokenrate_25/decoder.ckpt",
        "/w/codebook_idx/combine_128_audioset_dominate/codebook_8192_0.npy",
    ]
    assert weight_files("/w", 100, 4096)[2].parent.name == "combine_512_audioset_dominate"
    with pytest.raises(ValueError, match="semantic_vocab_size"):
        weight_files("/w", 50, 1000)


def test_a_codebook_in_the_packages_own_layout_is_accepted_too(tmp_path: Path) -> None:
    inside = tmp_path / "semanticodec_tokenrate_50/codebook_idx/combine_256_audioset_dominate/codebook_2048_0.npy"
    inside.parent.mkdir(parents=True)
    inside.write_bytes(b"")
    assert weight_files(tmp_path, 50, 4096)[2] == inside


@pytest.mark.parametrize("rate, group, samples", [(100, 8, 2560), (50, 4, 2560), (25, 4, 5120)])
def test_tokens_are_spent_in_whole_audiomae_patches(rate: int, group: int, samples: int) -> None:
    assert patch_frames(rate) == group and patch_samples(rate) == samples
    for n in (1, samples - 1, samples, samples + 1, 16000, 160000, 163840):
        spent = spent_frames(n, rate)
        assert spent % group == 0 and spent >= num_frames(n, rate)
        assert spent - group < num_frames(n, rate)  # never a whole patch more than needed
    # at r = 100, ceil(n / F) cuts a patch for most lengths: 88% of 1..10 s in 20 ms steps
    cut = [n for n in range(320, 160001, 320) if num_frames(n, 100) % 8]
    assert len(cut) / 500 == pytest.approx(0.875, abs=0.002)


def test_empty_weights_dir_is_not_set_not_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    for value in ("", "  ", None):
        assert "backend option weights_dir is not set" in missing_requirements(value, (100,), 16384)


def test_device_option_hides_the_other_gpus_before_torch_loads() -> None:
    environ: dict[str, str] = {}
    assert isolate_device({"device": "cpu"}, environ) == {"device": "cpu"} and environ == {"CUDA_VISIBLE_DEVICES": ""}
    environ = {}
    assert isolate_device({"device": "cuda:1"}, environ) == {"device": "cuda:0"}
    assert environ == {"CUDA_VISIBLE_DEVICES": "1"}
    environ = {"CUDA_VISIBLE_DEVICES": "4,6"}
    assert isolate_device({"device": "cuda:1", "x": 1}, environ) == {"device": "cuda:0", "x": 1}
    assert environ == {"CUDA_VISIBLE_DEVICES": "6"}
    with pytest.raises(ValueError, match="shows only 2 GPUs"):
        isolate_device({"device": "cuda:2"}, {"CUDA_VISIBLE_DEVICES": "4,6"})
    assert isolate_device({}, environ) == {}
    with pytest.raises(ValueError, match="device must be"):
        check_backend("semanticodec", {"device": "gpu0", "weights_dir": "/w"})


def test_backends_are_one_table_and_an_unknown_name_is_an_error() -> None:
    assert BACKEND_NAMES == tuple(BACKENDS) == ("rvq_mel", "semanticodec")
    assert "device" in BACKENDS["semanticodec"].options
    for call in (lambda: check_options("semanticodex", {}), lambda: make_codec("semanticodex", 50),
                 lambda: check_backend("semanticodex")):
        with pytest.raises(ValueError, match=r"backend must be one of \('rvq_mel', 'semanticodec'\)"):
            call()


def test_setup_cfg_extras_name_no_package_missing_from_pypi() -> None:
    parser = configparser.ConfigParser()
    parser.read(REPO / "setup.cfg")
    extras = parser["options.extras_require"] if parser.has_section("options.extras_require") else {}
    for name in extras:
        requirements = [line.strip() for line in extras[name].splitlines() if line.strip()]
        assert all(not re.fullmatch(r"semanticodec\b.*", r) or "@" in r for r in requirements), requirements


def test_ci_makes_the_codec_environment_before_the_readme_test_command() -> None:
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash tools/setup_codec_env.sh" in ci
    assert ci.index("tools/setup_codec_env.sh") < ci.index("bash tools/setup.sh && .venv/bin/python -m pytest -q")
    assert ".venv-codec/" in (REPO / ".gitignore").read_text().split()


@needs_package_absent
def test_missing_package_message_says_what_to_install_and_where_weights_go() -> None:
    with pytest.raises(BackendUnavailableError) as caught:
        check_backend("semanticodec", {})
    message = str(caught.value)
    assert SETUP_COMMAND in message and ".venv-codec/bin/python" in message
    assert "pip install --no-deps git+https://github.com/haoheliu/SemantiCodec-inference" in message
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
    assert [m.split(" in /")[0] for m in missing_requirements(tmp_path, (50,), 8192)] == [
        "the Python package 'semanticodec' is not installed"
    ]


@needs_package_absent
def test_client_reports_the_missing_package_and_leaves_no_process(tmp_path: Path) -> None:
    before = child_pids()
    with pytest.raises(BackendUnavailableError, match=re.escape(SETUP_COMMAND)):
        CodecClient(backend="semanticodec", backend_options={"weights_dir": str(tmp_path)}, num_threads=0)
    assert child_pids() <= before


def test_a_non_directory_weights_dir_is_reported(tmp_path: Path) -> None:
    missing = missing_requirements(tmp_path / "nope", (25,), 16384)
    assert f"weights_dir {tmp_path / 'nope'} is not a directory" in missing


