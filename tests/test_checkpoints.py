"""Loading and saving: HF directories (single and sharded), orbax, export back, mismatch errors."""

from __future__ import annotations

import json
import shutil

import jax
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration
from agac_jax.models.qwen2_audio.parity import PARITY_WORDS, run_parity
from agac_jax.models.qwen2_audio.prompts import PromptError
from tests.tiny_models import load_hf_eager, make_hf_checkpoint, make_scoring_checkpoint


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf"), "gqa3_mel80", seed=1)


def _inputs(config, n_mels=80):
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, n_mels, 3000)).astype(np.float32)
    mask = (np.arange(3000) < 900).astype(np.int64)[None]
    ids = np.asarray([[1, 2] + [config.audio_token_id] * 225 + [3, 4]])
    return ids, np.ones_like(ids), feats, mask


def _hf_logits(directory, ids, att, feats, mask):
    hf = load_hf_eager(directory)
    with torch.no_grad():
        return hf(input_ids=torch.tensor(ids), attention_mask=torch.tensor(att), input_features=torch.tensor(feats),
                  feature_attention_mask=torch.tensor(mask)).logits.numpy()


def test_round_trip_hf_flax_orbax_flax_hf(hf_dir, tmp_path):
    loaded = checkpoints.load_hf_directory(hf_dir)
    checkpoints.save_orbax(tmp_path / "orbax", loaded.params, loaded.config)
    config, params = checkpoints.restore_orbax(tmp_path / "orbax")
    assert config == loaded.config
    for a, b in zip(jax.tree_util.tree_leaves(loaded.params), jax.tree_util.tree_leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    checkpoints.save_hf_directory(tmp_path / "export", config, params, loaded.generation_config)
    ids, att, feats, mask = _inputs(config)
    original = _hf_logits(hf_dir, ids, att, feats, mask)
    exported = _hf_logits(tmp_path / "export", ids, att, feats, mask)
    np.testing.assert_array_equal(exported, original)
    model = Qwen2AudioForConditionalGeneration(config)
    flax = jax.jit(lambda p, *inputs: model.apply({"params": p}, *inputs))(params, ids, att, feats, mask.sum(-1))
    assert np.abs(np.asarray(flax) - original).max() <= 1e-4 * np.abs(original).max()


def test_sharded_index_and_transformers4_key_names_load(hf_dir, tmp_path):
    state = load_file(str(hf_dir / "model.safetensors"))
    keys = sorted(state)
    shards = {"model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    directory = tmp_path / "sharded"
    directory.mkdir()
    shutil.copy(hf_dir / "config.json", directory / "config.json")
    legacy = lambda k: k.replace("model.language_model.", "language_model.model.").replace(
        "model.audio_tower.", "audio_tower.")
    weight_map = {}
    for name, part in shards.items():
        save_file({legacy(k): state[k] for k in part}, str(directory / name))
        weight_map.update({legacy(k): name for k in part})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sharded = checkpoints.load_hf_directory(directory)
    single = checkpoints.load_hf_directory(hf_dir)
    for a, b in zip(jax.tree_util.tree_leaves(single.params), jax.tree_util.tree_leaves(sharded.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_mismatched_checkpoint_lists_every_bad_key(hf_dir):
    state = load_file(str(hf_dir / "model.safetensors"))
    config = checkpoints.load_hf_directory(hf_dir).config
    key = [k for k in state if k.endswith("layers.0.mlp.up_proj.weight")][0]
    state.pop(key)
    state["extra.weight"] = np.zeros(3, np.float32)
    shape_key = [k for k in state if k.endswith("layers.1.self_attn.o_proj.weight")][0]
    state[shape_key] = np.zeros((5, 5), np.float32)
    with pytest.raises(checkpoints.CheckpointError) as err:
        checkpoints.convert_hf_state(state, config)
    message = str(err.value)
    assert "1 missing, 1 unexpected, 1 mis-shaped" in message
    assert "model.language_model.layers.0.mlp.up_proj.weight" in message
    assert "extra.weight" in message
    assert f"{shape_key}: checkpoint (5, 5)" in message


def test_pickle_weights_are_refused_unless_allowed(hf_dir, tmp_path):
    directory = tmp_path / "bin"
    directory.mkdir()
    shutil.copy(hf_dir / "config.json", directory / "config.json")
    state = {k: torch.from_numpy(v) for k, v in load_file(str(hf_dir / "model.safetensors")).items()}
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(checkpoints.CheckpointError, match="pickle") as refused:
        checkpoints.load_hf_directory(directory)
    assert "--allow_pickle" not in str(refused.value) and "checkpoints.convert_pickles(" in str(refused.value)
    loaded = checkpoints.load_hf_directory(directory, allow_pickle=True)
    reference = checkpoints.load_hf_directory(hf_dir)
    for a, b in zip(jax.tree_util.tree_leaves(reference.params), jax.tree_util.tree_leaves(loaded.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert checkpoints.convert_pickles(directory) == directory / "model.safetensors"  # the hint's command
    converted = checkpoints.load_hf_directory(directory)
    for a, b in zip(jax.tree_util.tree_leaves(reference.params), jax.tree_util.tree_leaves(converted.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("damage, message", [
    ("truncated", r"model.safetensors \(\d+ bytes\) is not a readable safetensors file: .* truncated or corrupt"),
    ("list_config", r"config.json holds a JSON list, not an object of settings"),
    ("bad_json", r"config.json is not valid JSON"),
    ("other_model", r"config.json: config.json has model_type='llama'; expected 'qwen2_audio'"),
])
def test_an_unreadable_directory_is_a_checkpoint_error_naming_the_file(hf_dir, tmp_path, damage, message):
    """A user error (agac_jax/cli/errors.py): the launch tools end with one `error:` line naming the file."""
    from agac_jax.cli import errors

    directory = tmp_path / damage
    shutil.copytree(hf_dir, directory)
    weights, config = directory / "model.safetensors", directory / "config.json"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    elif damage == "list_config":
        config.write_text("[1, 2]")
    elif damage == "bad_json":
        config.write_text('{"model_type": ')
    else:
        config.write_text(json.dumps({**json.loads(config.read_text()), "model_type": "llama"}))
    with pytest.raises(checkpoints.CheckpointError, match=message) as refused:
        checkpoints.load_hf_directory(directory)
    assert len(errors.user_error_message(refused.value).splitlines()) == 1


def test_parity_refuses_a_directory_without_processor_files(hf_dir):
    with pytest.raises(PromptError, match="no tokenizer files"):
        run_parity(hf_dir, max_new_tokens=1)


def test_parity_tool_passes_and_flags_differences_over_tolerance(tmp_path):
    hf_dir = make_scoring_checkpoint(tmp_path, "gqa3_mel80", words=PARITY_WORDS)
    report = run_parity(hf_dir, max_new_tokens=4)
    assert report.ok, report.table()
    assert set(report.arrays) == {"audio_embeddings", "logits", "attentions", "greedy_tokens", "input_ids"}
    layers, batch = report.arrays["attentions"].shape[:2]
    assert (layers, batch) == (2, 2)
    strict = run_parity(hf_dir, max_new_tokens=1, tolerance=1e-12)
    assert not strict.ok and "FAIL" in strict.table()
