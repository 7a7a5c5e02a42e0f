"""The ``semanticodec`` backend against the real, unmodified package, in its own environment.

The package runs in ``.venv-codec`` (``bash tools/setup_codec_env.sh``; ``.ci/run`` makes it), never
in the project's environment, whose torch 2.13 has no matching torchaudio. The session writes random
r = 100 weights in the hub's layout (``agac_jax.codec.semanticodec_random``: the package's own
modules, freshly initialised, and a random codebook), runs ``agac_jax.codec.semanticodec_check``
once in that environment, and starts one sidecar there through ``CodecClient(python=...)``, with
one DDIM step and one torch thread (the suite's other xdist worker has the other core). Without the
environment every test here is skipped, and the reason says how to make it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from agac_jax.codec import CodecClient, CodecRequest, num_frames
from agac_jax.codec.semanticodec_backend import patch_frames, spent_frames

REPO = Path(__file__).resolve().parents[1]
CODEC_PYTHON = REPO / ".venv-codec" / "bin" / "python"
VOCAB = 4096  # the smallest semantic vocabulary: a 2048-row codebook
OPTIONS = {"semantic_vocab_size": VOCAB, "ddim_sample_step": 1}


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CODEC_PYTHON), *args], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="session")
def codec_python() -> Path:
    if not CODEC_PYTHON.is_file():
        pytest.skip(f"no codec environment at {CODEC_PYTHON}: run `bash tools/setup_codec_env.sh` to test "
                    "the semanticodec backend against the real package")
    probe = _run(["-c", "import semanticodec, soundfile, soxr"], timeout=300)
    if probe.returncode != 0:
        pytest.skip(f"{CODEC_PYTHON} cannot import semanticodec (rerun `bash tools/setup_codec_env.sh`): "
                    f"{probe.stderr.strip().splitlines()[-1:]}")
    return CODEC_PYTHON


@pytest.fixture(scope="session")
def weights_dir(codec_python: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("semanticodec_random")
    written = _run(["-m", "agac_jax.codec.semanticodec_random", f"--out={root}", "--rates=100",
                    f"--semantic_vocab_size={VOCAB}"], timeout=600)
    assert written.returncode == 0, written.stderr[-3000:]
    yield root
    shutil.rmtree(root, ignore_errors=True)  # 2.3 GB


@pytest.fixture(scope="session")
def report(weights_dir: Path) -> dict:
    checked = _run(["-m", "agac_jax.codec.semanticodec_check", f"--weights_dir={weights_dir}",
                    f"--semantic_vocab_size={VOCAB}", "--num_threads=1"], timeout=900)
    assert checked.returncode == 0, checked.stderr[-3000:]
    line = next(line for line in checked.stdout.splitlines() if line.startswith("AGAC_REPORT "))
    return json.loads(line[len("AGAC_REPORT "):])


@pytest.fixture(scope="session")
def client(weights_dir: Path, report: dict):  # after the report: one 5 GB codec in memory at a time
    with CodecClient(
        backend="semanticodec", backend_options={**OPTIONS, "weights_dir": str(weights_dir)},
        python=".venv-codec/bin/python", num_threads=1, timeout_s=900, startup_timeout_s=600,
        stderr=subprocess.DEVNULL,
    ) as codec:
        yield codec


def test_weights_written_in_the_hub_layout_load_unmodified(weights_dir: Path, report: dict) -> None:
    # Defect 3: the hub keeps codebook_idx/ at the root, beside the rate folders; the package, given
    # checkpoint_path, looks inside the rate folder (and would try the hub when it is not there).
    assert (weights_dir / "codebook_idx" / "combine_512_audioset_dominate" / "codebook_2048_0.npy").is_file()
    assert not (weights_dir / "semanticodec_tokenrate_100" / "codebook_idx").exists()
    assert report["vocab"] == {"semantic": 2048, "acoustic": 8192}


def test_codebook_and_device_attributes_are_placed_at_construction(report: dict) -> None:
    # Defect 1: `.to(device)` does not move encoder.centroid_npy (a plain tensor) and the package sets
    # encoder.device only inside encoder.forward, so a decode before any encode met a CPU codebook.
    placement = report["placement"]
    assert placement == {
        "device": "cpu", "encoder_device_attribute": "cpu", "codebook": "cpu",
        "decoder_device_attribute": "cpu", "parameters": ["cpu"],
    }
    assert report["decode_before_encode"]["samples"] == report["decode_before_encode"]["expected"] == 16 * 320


def test_decode_before_encode_on_a_gpu(weights_dir: Path, report: dict) -> None:
    # Defect 1 as it was seen: on a GPU the fresh codec's decode met a CPU codebook in F.embedding.
    if not report["cuda_available"]:
        pytest.skip("no CUDA device in the codec environment: decode-before-encode on a GPU is not run")
    checked = _run(["-m", "agac_jax.codec.semanticodec_check", f"--weights_dir={weights_dir}",
                    f"--semantic_vocab_size={VOCAB}", "--device=cuda:0"], timeout=900)
    assert checked.returncode == 0, checked.stderr[-3000:]
    gpu = json.loads(next(l for l in checked.stdout.splitlines() if l.startswith("AGAC_REPORT "))[12:])
    assert gpu["placement"] == {
        "device": "cuda:0", "encoder_device_attribute": "cuda:0", "codebook": "cuda:0",
        "decoder_device_attribute": "cuda:0", "parameters": ["cuda:0"],
    }
    assert gpu["decode_before_encode"]["samples"] == gpu["decode_before_encode"]["expected"]
    assert gpu["seed"]["same_seed_equal"] is True


def test_encoder_input_is_the_packages_own_load_audio_without_a_file(report: dict) -> None:
    # Defect 2: encode no longer goes through torchaudio.load (needs torchcodec, absent here).
    features = report["features"]
    assert features["shape"] == features["package_shape"] == [1, 1024, 128]
    assert features["max_abs_diff"] == 0.0


def test_encode_spends_whole_audiomae_patches(report: dict) -> None:
    # Defect 4: 20800 samples are 65 frames of 20 ms; the codec spends 9 whole 0.16 s patches.
    encode = report["encode"]
    assert encode["shape"] == [72, 2] and encode["spent_frames"] == 72 and encode["patch_frames"] == 8
    assert num_frames(encode["samples"], 100) == 65
    # ... as many as the package's own encode keeps (the old backend cut them to ceil(n / F) = 65).
    assert report["features"]["package_target_token_len"] == pytest.approx(72.0)


def test_decoder_draw_is_seeded(report: dict) -> None:
    assert report["seed"]["same_seed_equal"] is True
    assert report["seed"]["other_seed_max_abs_diff"] > 0.0


def test_out_of_range_and_partial_patch_tokens_are_refused(report: dict) -> None:
    errors = report["token_errors"]
    assert "semantic tokens are outside [0, 2048)" in errors["semantic"]
    assert "acoustic tokens are outside [0, 8192)" in errors["acoustic"]
    assert "semantic tokens are outside [0, 2048) (first: -1" in errors["negative"]
    assert "whole AudioMAE patches of 8 token pairs; got 15" in errors["partial_patch"]


def test_sidecar_under_the_codec_interpreter_compresses_kept_frames(client: CodecClient) -> None:
    assert client.python.endswith(".venv-codec/bin/python") and client.python != sys.executable
    rng = np.random.default_rng(1)
    waveform = (0.1 * rng.standard_normal(24000)).astype(np.float32)  # 1.5 s: 75 frames at r = 100
    kept = np.concatenate([np.arange(0, 20), np.arange(40, 61)])  # 41 frames, 13120 samples
    reply = next(client.compress([CodecRequest("a", waveform, 100, kept, seed=3)]))
    assert reply.ok, reply.failure
    assert reply.n_frames == 75
    assert reply.tokens.shape == (spent_frames(41 * 320, 100), 2) == (48, 2)
    assert reply.tokens.shape[0] % patch_frames(100) == 0
    assert reply.clip_tokens == 2 * spent_frames(24000, 100) == 2 * 80
    assert reply.waveform.shape == (41 * 320,) and np.all(np.isfinite(reply.waveform))
    assert reply.peak_rss_bytes > 1 << 30
    assert {"load", "encode", "decode"} <= set(reply.seconds)


def test_codec_python_that_does_not_exist_says_how_to_make_it() -> None:
    with pytest.raises(ValueError, match="tools/setup_codec_env.sh"):
        CodecClient(backend="semanticodec", backend_options={"weights_dir": "/nowhere"}, python="no-venv/bin/python")
