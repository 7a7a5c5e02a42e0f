"""Streaming, sharded loading: tensor by tensor onto NamedShardings, cast, layer-scanned; bounded host memory."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from agac_jax.models import hf_checkpoints
from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.models.config import Qwen2AudioConfig
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration
from agac_jax.models.qwen2_audio.adapter import param_shardings
from agac_jax.scoring.sharding import make_mesh
from tests.tiny_models import make_hf_checkpoint

ROOT = Path(__file__).resolve().parents[1]
RULES = (("vocab", "model"), ("mlp", "model"), ("heads", "model"), ("kv_heads", None), ("embed", None),
         ("audio_embed", None), ("norm", None))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf"), "gqa3_mel80", seed=1)


def _sharded_copy(hf_dir: Path, directory: Path, n_shards: int = 3) -> Path:
    """The checkpoint split over n_shards safetensors files with an index, as released checkpoints are."""
    state = load_file(str(hf_dir / "model.safetensors"))
    keys = sorted(state)
    directory.mkdir()
    shutil.copy(hf_dir / "config.json", directory / "config.json")
    weight_map = {}
    for i in range(n_shards):
        name = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        part = keys[i::n_shards]
        save_file({k: state[k] for k in part}, str(directory / name))
        weight_map.update({k: name for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return directory


def _flat(params):
    return {k: np.asarray(v) for k, v in checkpoints.flatten(params).items()}


def test_streamed_sharded_load_equals_host_load_and_places_each_leaf(hf_dir, tmp_path, monkeypatch):
    directory = _sharded_copy(hf_dir, tmp_path / "sharded")
    host = checkpoints.load_hf_directory(hf_dir)
    mesh = make_mesh((2, 4))
    # Tiny blocks, so that every leaf over 4 KiB goes through the block-by-block path.
    monkeypatch.setattr(hf_checkpoints, "BLOCK_BYTES", 4096)
    placed = checkpoints.load_hf_directory(directory, shardings=lambda c: param_shardings(c, mesh, RULES))
    want = checkpoints.flatten(param_shardings(placed.config, mesh, RULES))
    got = checkpoints.flatten(placed.params)
    assert set(got) == set(want)
    for path, leaf in got.items():
        assert isinstance(leaf, jax.Array) and leaf.sharding == want[path], path
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(checkpoints.flatten(host.params)[path]), path)
    sharded_axes = [p for p, sh in want.items() if "model" in tuple(sh.spec)]
    assert sharded_axes, "the rules shard nothing: the test would not test placement"


def test_block_path_equals_whole_path_for_every_transform(hf_dir):
    state = load_file(str(hf_dir / "model.safetensors"))
    config = checkpoints.load_hf_directory(hf_dir).config
    whole = _flat(checkpoints.convert_hf_state(state, config))
    blocks = _flat(checkpoints.convert_hf_state(state, config, block_bytes=256))  # rows of CONV/LINEAR/SAME
    for path in whole:
        np.testing.assert_array_equal(blocks[path], whole[path], path)


def test_bfloat16_params_are_the_cast_float32_ones(hf_dir):
    f32 = checkpoints.load_hf_directory(hf_dir)
    bf16 = checkpoints.load_hf_directory(hf_dir, param_dtype="bfloat16", dtype="bfloat16")
    assert bf16.config.param_dtype == jnp.bfloat16 and bf16.config.dtype == jnp.bfloat16
    for path, value in _flat(bf16.params).items():
        assert value.dtype == ml_dtypes.bfloat16, path
        np.testing.assert_array_equal(value, _flat(f32.params)[path].astype(ml_dtypes.bfloat16), path)


def test_scanned_layout_loads_exports_and_computes_the_same(hf_dir, tmp_path):
    plain = checkpoints.load_hf_directory(hf_dir)
    mesh = make_mesh((1, 2))
    scanned = checkpoints.load_hf_directory(hf_dir, scan_layers=True,
                                            shardings=lambda c: param_shardings(c, mesh, RULES))
    flat = checkpoints.flatten(scanned.params)
    n = plain.config.text.num_hidden_layers
    assert not any(p.startswith("language_model/layers_") for p in flat)
    assert flat["language_model/layers/layer/mlp/up_proj/kernel"].shape[0] == n
    restacked = checkpoints.scan_flat(_flat(plain.params), n)
    for path, value in flat.items():
        np.testing.assert_array_equal(np.asarray(value), restacked[path], path)
    # export from the scanned tree gives the original HF tensors
    exported = checkpoints.flax_to_hf_state(scanned.params)
    original = {checkpoints.modernize_key(k): v for k, v in load_file(str(hf_dir / "model.safetensors")).items()}
    assert set(exported) == set(original)
    for key in original:
        np.testing.assert_array_equal(exported[key], original[key], key)
    # and the scanned model computes what the unrolled one does
    rng = np.random.default_rng(0)
    c = plain.config
    ids = np.asarray([[1, 2] + [c.audio_token_id] * 25 + [3, 4]])
    feats = rng.standard_normal((1, c.audio.num_mel_bins, 100)).astype(np.float32)
    args = (ids, np.ones_like(ids), feats, np.asarray([100]))
    a, b = (jax.jit(lambda p, *inputs, m=Qwen2AudioForConditionalGeneration(x.config): m.apply({"params": p}, *inputs))(
        x.params, *args) for x in (plain, scanned))
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-5 * float(np.abs(a).max()))


def test_orbax_restore_into_shardings_and_dtype(hf_dir, tmp_path):
    loaded = checkpoints.load_hf_directory(hf_dir)
    checkpoints.save_orbax(tmp_path / "orbax", loaded.params, loaded.config)
    mesh = make_mesh((2, 2))
    config, params = checkpoints.restore_orbax(tmp_path / "orbax", param_dtype="bfloat16",
                                               shardings=lambda c: param_shardings(c, mesh, RULES))
    assert config.param_dtype == jnp.bfloat16
    want = checkpoints.flatten(param_shardings(config, mesh, RULES))
    for path, leaf in checkpoints.flatten(params).items():
        assert leaf.sharding == want[path] and leaf.dtype == jnp.bfloat16, path
        expect = np.asarray(checkpoints.flatten(loaded.params)[path]).astype(ml_dtypes.bfloat16)
        np.testing.assert_array_equal(np.asarray(leaf), expect, path)


# --- peak host memory of a 7B-width load -------------------------------------------------------

WIDE_CONFIG = {
    "architectures": ["Qwen2AudioForConditionalGeneration"], "model_type": "qwen2_audio", "audio_token_index": 8000,
    "audio_config": {"num_mel_bins": 128, "encoder_layers": 1, "encoder_attention_heads": 20,
                     "encoder_ffn_dim": 5120, "d_model": 1280, "max_source_positions": 1500},
    "text_config": {"model_type": "qwen2", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 2,
                    "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 8192, "rms_norm_eps": 1e-5,
                    "tie_word_embeddings": False},
}

_MEASURE = textwrap.dedent("""
    import json, resource, sys
    sys.path.insert(0, sys.argv[2])
    import jax
    from agac_jax.models.qwen2_audio import checkpoints
    from agac_jax.models.qwen2_audio.adapter import param_shardings
    from agac_jax.scoring.sharding import make_mesh
    mesh = make_mesh((1, 1))
    jax.block_until_ready(jax.numpy.zeros(4) + 1)  # start the backend before the baseline
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    base = rss()
    loaded = checkpoints.load_hf_directory(sys.argv[1], param_dtype="bfloat16", dtype="bfloat16",
                                           shardings=lambda c: param_shardings(c, mesh, ()))
    jax.block_until_ready(loaded.params)
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak into ru_maxrss across exec, so a
    # large pytest process would be counted (the full suite read 4 GB for a 1 GB load).
    with open("/proc/self/status") as f:
        peak = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) * 1024
    params = sum(x.nbytes for x in jax.tree_util.tree_leaves(loaded.params))
    print(json.dumps(dict(base=base, peak=peak, after=rss(), params=params)))
""")


def _write_wide_checkpoint(directory: Path) -> int:
    """A sharded bf16 safetensors directory of WIDE_CONFIG's model (one shard per decoder layer and one
    for the rest); returns its bytes on disk."""
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(WIDE_CONFIG))
    config = Qwen2AudioConfig.from_hf_dict(WIDE_CONFIG)
    shards: dict[str, dict[str, np.ndarray]] = {}
    for path, shape in checkpoints.expected_shapes(config).items():
        key, transform = checkpoints.flax_to_hf_key(path)
        hf_shape = shape if transform == checkpoints.SAME else tuple(reversed(shape))
        layer = key.split("layers.")[1].split(".")[0] if "language_model.layers." in key else "rest"
        shards.setdefault(layer, {})[key] = np.full(hf_shape, 0.01, ml_dtypes.bfloat16)
    weight_map = {}
    for i, (name, tensors) in enumerate(sorted(shards.items())):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(tensors, str(directory / file))
        weight_map.update({k: file for k in tensors})
    shards.clear()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def test_peak_host_memory_of_a_7b_width_load_is_bounded(tmp_path):
    """Hidden 4096, intermediate 11008, 32 heads (the released widths), 2 decoder layers, vocab cut to
    8192: about 0.9 GB of bf16 on disk. The load's peak RSS above the process's baseline must stay under
    the bf16 size on disk + 1 GB (the issue's bound): the placed parameters (on CPU they live in host
    memory) plus a few 64 MB blocks. The old path (all tensors read as float32,
    then converted copies) needed about 4x the disk size."""
    disk = _write_wide_checkpoint(tmp_path / "wide")
    # glibc gives threads their own malloc arenas and keeps what they free resident; two arenas keep
    # RSS a measure of what the loader holds.
    env = {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1",
           "PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "MALLOC_ARENA_MAX": "2"}
    proc = subprocess.run([sys.executable, "-c", _MEASURE, str(tmp_path / "wide"), str(ROOT)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = json.loads(proc.stdout.strip().splitlines()[-1])
    increase = m["peak"] - m["base"]
    print(f"disk {disk / 2**20:.0f} MiB, params {m['params'] / 2**20:.0f} MiB, "
          f"peak increase {increase / 2**20:.0f} MiB")
    assert abs(m["params"] - disk) < 0.01 * disk  # the placed bf16 parameters are the disk's bytes
    assert increase <= disk + 2**30, (increase - disk) / 2**20  # measured: disk + 143 to 162 MiB


def test_streamed_tensor_comparison_handles_a_last_block_shorter_than_the_block(tmp_path):
    """The tied-head check compares the embedding and the head block by block straight from the file;
    safetensors refuses a slice past a tensor's end (numpy would clip it)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((34, 8)).astype(np.float32)
    b = a.copy()
    b[33, 7] += 1.0
    save_file({"a": a, "same": a.copy(), "b": b}, str(tmp_path / "model.safetensors"))
    source = checkpoints.TensorSource.from_directory(tmp_path)
    assert hf_checkpoints.tensors_equal(source, "a", "same", block_rows=16)
    assert not hf_checkpoints.tensors_equal(source, "a", "b", block_rows=16)
