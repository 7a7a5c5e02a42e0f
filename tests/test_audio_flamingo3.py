"""Audio Flamingo 3: the Flax port against transformers on a tiny random model in the released layout.

One batch holds a 1.2 s, an 11.3 s and a 31.5 s clip: the processor cuts the last into two 30 s windows
(four windows in all), so the batch has clips that do not reach the second window column.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from agac_jax.models.audio_flamingo3 import checkpoints, parity, prompts
from agac_jax.models.audio_flamingo3.config import AudioFlamingo3Config
from agac_jax.models.audio_flamingo3.model import AudioFlamingo3ForConditionalGeneration
from agac_jax.models.qwen2_audio.checkpoints import CheckpointError, flatten, unscan_flat

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny_audio_flamingo3_random.json"
SECONDS = (1.2, 11.3, 31.5)
QUESTIONS = ["What is in the audio?", "Is there a dog barking?", "Describe <sound> and <|im_end|> it."]
# <sound> per clip: 120, 1130 and 3150 valid mel frames -> ((L - 1) // 2 + 1) // 2.
EXPECTED_TOKENS = [30, 282, 787]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return parity.random_init_directory(TINY, seed=1, out=tmp_path_factory.mktemp("af3") / "model")


@pytest.fixture(scope="module")
def clips():
    return parity.synthetic_clips(SECONDS)


@pytest.fixture(scope="module")
def report(model_dir, clips):
    return parity.run_parity(model_dir, clips=clips, questions=QUESTIONS, max_new_tokens=4)


def test_released_layout(model_dir):
    names = {p.name for p in model_dir.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors.index.json", "chat_template.jinja",
            "processor_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert len([n for n in names if n.startswith("model-")]) >= 2  # sharded, as released
    config = json.loads((model_dir / "config.json").read_text())
    assert config["model_type"] == "audioflamingo3" and config["audio_token_id"] == 151669


def test_the_tokenizer_is_autotokenizers(model_dir):
    """The adapter loads the class tokenizer_config.json names (`hf_checkpoints.load_tokenizer`): the
    class, special tokens and ids AutoTokenizer gives on the released layout."""
    from transformers import AutoTokenizer

    from agac_jax.models.hf_checkpoints import load_tokenizer

    ours, theirs = load_tokenizer(model_dir), AutoTokenizer.from_pretrained(str(model_dir))
    assert type(ours) is type(theirs) and ours.all_special_tokens == theirs.all_special_tokens
    text = "<|im_start|>user\n<sound>is there a tone ?<|im_end|>\n"
    assert ours(text)["input_ids"] == theirs(text)["input_ids"] and len(ours) == len(theirs)


def test_parity_with_transformers(report):
    print("\n" + report.table())
    assert report.ok, report.table()
    names = [c.name for c in report.comparisons]
    assert names[:5] == ["prompt ids", "log-mel features", "audio_embeddings", "logits", "attention layer 0"]
    assert names[-1] == "greedy tokens (count)" and "attention layer 1" in names
    # The comparisons measure two computations, not one array twice.
    measured = [c for c in report.comparisons if c.name in ("log-mel features", "audio_embeddings", "logits")]
    assert len(measured) == 3 and all(c.max_abs > 0 for c in measured)
    assert int(report.arrays["processor_windows"]) == 4  # 1 + 1 + 2 windows
    assert report.arrays["num_audio_tokens"].tolist() == EXPECTED_TOKENS
    assert report.arrays["greedy_tokens"].shape == (3, 4)


def test_parity_fails_on_a_wrong_projector(model_dir, clips, report, monkeypatch):
    load = checkpoints.load_hf_directory

    def perturbed(*args, **kwargs):
        loaded = load(*args, **kwargs)
        bias = loaded.params["multi_modal_projector"]["linear_2"]["bias"]
        loaded.params["multi_modal_projector"]["linear_2"]["bias"] = bias + 1e-2
        return loaded

    monkeypatch.setattr(parity.checkpoints, "load_hf_directory", perturbed)
    bad = parity.run_parity(model_dir, clips=clips, questions=QUESTIONS, max_new_tokens=4,
                            reference=report.reference)
    failed = {c.name for c in bad.comparisons if not c.ok}
    assert {"audio_embeddings", "logits"} <= failed
    assert "log-mel features" not in failed and "prompt ids" not in failed


def test_prompts_follow_the_processor(model_dir, clips, report):
    from transformers import AutoTokenizer

    settings = prompts.load_processor_settings(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    batch = prompts.build_prompts(tokenizer, settings, QUESTIONS, clips)
    theirs = report.reference.inputs  # AudioFlamingo3Processor.apply_chat_template's
    np.testing.assert_array_equal(batch.input_ids, theirs["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, theirs["attention_mask"])
    assert batch.attention_mask[:, 0].tolist() == [0, 0, 1]  # left padding, the processor's default
    assert (batch.input_ids == 151669).sum(-1).tolist() == EXPECTED_TOKENS
    assert batch.num_windows.tolist() == [1, 1, 2]
    windows, mask = batch.processor_windows()
    np.testing.assert_array_equal(mask, theirs["input_features_mask"])
    # The question's control tokens stay text (sanitized on both sides): one <sound> run per prompt.
    text = tokenizer.decode(batch.input_ids[2][batch.attention_mask[2] > 0])
    assert "Describe <sound> and <|im_end|> it." in text
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<sound>")


def test_last_window_bucket(model_dir, clips, report):
    """A bucket for the last window column gives the same valid embeddings as full windows (the parity
    run's, which match transformers' window by window)."""
    from transformers import AutoTokenizer

    loaded = checkpoints.load_hf_directory(model_dir)
    model = AudioFlamingo3ForConditionalGeneration(loaded.config)
    settings = prompts.load_processor_settings(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    bucket = prompts.build_prompts(tokenizer, settings, QUESTIONS, clips, last_window_frames=200)
    assert bucket.input_features.shape[-1] == 3200
    np.testing.assert_array_equal(bucket.input_ids, report.arrays["input_ids"])
    encode = jax.jit(lambda p, f, m: model.apply({"params": p}, f, m, method=model.encode_audio))
    audio, n = report.arrays["audio_embeddings"], report.arrays["num_audio_tokens"]
    audio_b, n_b = encode(loaded.params, bucket.input_features, bucket.mel_lengths)
    assert audio.shape[1] == 1500 and audio_b.shape[1] == 800 and np.asarray(n_b).tolist() == EXPECTED_TOKENS
    valid = np.arange(800)[None] < n[:, None]
    np.testing.assert_allclose(np.asarray(audio_b)[valid], audio[:, :800][valid], rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="cannot hold"):
        prompts.build_prompts(tokenizer, settings, QUESTIONS, clips, last_window_frames=100)


def test_interface(model_dir):
    loaded = checkpoints.load_hf_directory(model_dir)
    model = AudioFlamingo3ForConditionalGeneration(loaded.config)
    assert (model.audio_token_id, model.num_layers, model.num_heads) == (151669, 2, 4)
    audio, silence = jnp.ones((5, 32)), jnp.zeros((5, 32))
    gate = jnp.asarray([1.0, 0.0, 0.5, 1.0, 0.0])
    mixed = model.apply({"params": loaded.params}, gate, audio, silence, method=model.gate_audio)
    np.testing.assert_allclose(np.asarray(mixed[:, 0]), np.asarray(gate))
    cache = model.init_cache(2, 8)
    assert len(cache) == 2 and cache[0].k.shape == (2, 8, 2, 8)


def test_checkpoint_round_trip_both_key_layouts_and_scan(model_dir, tmp_path):
    loaded = checkpoints.load_hf_directory(model_dir)
    checkpoints.save_hf_directory(tmp_path / "export", loaded.config, loaded.params, loaded.generation_config,
                                  max_shard_bytes=8 << 20)
    assert (tmp_path / "export" / "model.safetensors.index.json").is_file()
    again = checkpoints.load_hf_directory(tmp_path / "export")
    assert again.config == loaded.config
    for path, value in flatten(loaded.params).items():
        np.testing.assert_array_equal(flatten(again.params)[path], value)
    # transformers' own names, and the transformers 4 layout the release's conversion saved.
    state = checkpoints.flax_to_hf_state(loaded.params)
    theirs = {}
    for name in json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"].values():
        theirs.update(load_file(str(model_dir / name)))
    assert set(state) == set(theirs)  # transformers writes the transformers 4 names
    assert "language_model.lm_head.weight" in state and "multi_modal_projector.linear_2.bias" in state
    modern = checkpoints.flax_to_hf_state(loaded.params, saved_names=False)
    assert "lm_head.weight" in modern and "model.multi_modal_projector.linear_2.bias" in modern
    (tmp_path / "modern").mkdir()
    save_file(modern, str(tmp_path / "modern" / "model.safetensors"))
    (tmp_path / "modern" / "config.json").write_text((model_dir / "config.json").read_text())
    scanned = checkpoints.load_hf_directory(tmp_path / "modern", scan_layers=True)
    for path, value in unscan_flat(flatten(scanned.params)).items():
        np.testing.assert_array_equal(value, flatten(loaded.params)[path])
    # A checkpoint without the projector's second layer is refused, naming both keys.
    del modern["model.multi_modal_projector.linear_2.weight"], modern["model.multi_modal_projector.linear_2.bias"]
    save_file(modern, str(tmp_path / "modern" / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing: model\.multi_modal_projector\.linear_2\.bias"):
        checkpoints.load_hf_directory(tmp_path / "modern")


def test_config_defaults_and_spellings():
    from transformers import AudioFlamingo3Config as HFConfig

    ours = AudioFlamingo3Config.from_hf_dict({"model_type": "audioflamingo3"})
    hf = HFConfig()
    a, t = hf.audio_config, hf.text_config
    assert dataclasses.astuple(ours.audio)[:6] == (a.num_mel_bins, a.num_hidden_layers, a.num_attention_heads,
                                                   a.intermediate_size, a.hidden_size, a.max_source_positions)
    assert (ours.text.vocab_size, ours.text.hidden_size, ours.text.num_hidden_layers, ours.text.rope_theta) == (
        t.vocab_size, t.hidden_size, t.num_hidden_layers, t.rope_parameters["rope_theta"])
    assert (ours.audio_token_id, ours.projector_hidden_act, ours.projector_bias) == (
        hf.audio_token_id, hf.projector_hidden_act, hf.projector_bias)
    whisper = AudioFlamingo3Config.from_hf_dict({"model_type": "audioflamingo3", "audio_config": {
        "encoder_layers": 3, "d_model": 64, "encoder_attention_heads": 2, "encoder_ffn_dim": 96}})
    assert (whisper.audio.encoder_layers, whisper.audio.d_model, whisper.audio.encoder_ffn_dim) == (3, 64, 96)
    assert AudioFlamingo3Config.from_hf_dict(ours.to_hf_dict()) == ours
    # The release's shapes, in transformers 4's spelling (the conversion script's Qwen2.5-7B text config).
    released = AudioFlamingo3Config.from_hf_dict({
        "model_type": "audioflamingo3", "audio_token_id": 151669,
        "audio_config": {"model_type": "audioflamingo3_encoder", "d_model": 1280, "encoder_layers": 32,
                         "encoder_attention_heads": 20, "encoder_ffn_dim": 5120, "num_mel_bins": 128},
        "text_config": {"model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
                        "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
                        "rope_theta": 1000000.0, "rope_scaling": None, "use_sliding_window": False,
                        "sliding_window": 131072, "vocab_size": 151672, "bos_token_id": 151643, "eos_token_id": 151645,
                        "tie_word_embeddings": False}})
    assert (released.text.kv_groups, released.text.rope_theta, released.window_tokens) == (7, 1e6, 750)
    with pytest.raises(ValueError, match="two spellings"):
        AudioFlamingo3Config.from_hf_dict({"model_type": "audioflamingo3",
                                           "audio_config": {"hidden_size": 32, "d_model": 64}})
    with pytest.raises(ValueError, match="audioflamingo3"):
        AudioFlamingo3Config.from_hf_dict({"model_type": "qwen2_audio"})


def test_the_scorer_takes_audio_flamingo3_through_its_adapter(model_dir, clips):
    """The model-agnostic Scorer takes the AF3 directory as it is (the family told by config.json): a
    clip of one window takes Qwen2-Audio's buckets, a 31.5 s clip two windows (3000 frames, then the last
    window's bucket), and the placeholders follow the 40 ms grid across both (its scores against the
    PyTorch reference: tests/test_reference_families.py)."""
    from agac_jax.scoring.scorer import Scorer, ScoringConfig

    scorer = Scorer.from_directory(model_dir, ScoringConfig(buckets_seconds=(2, 12, 35)))
    assert scorer.kind == "audio_flamingo3" and scorer.max_seconds == 60
    assert [scorer.bucket_frames(len(c)) for c in clips] == [200, 1200, 3200]
    assert [scorer.audio_token_count(len(c)) for c in clips] == EXPECTED_TOKENS
    inputs = scorer.adapter.inputs([clips[2]], [QUESTIONS[2]], 3200, padding_side="right", silence=True)
    assert inputs.features.shape[-1] == inputs.silence_features.shape[-1] == 3200
    assert int((inputs.input_ids == scorer.model.audio_token_id).sum()) == EXPECTED_TOKENS[2]
