"""Voxtral's Flax port (agac_jax.models.voxtral) against transformers' VoxtralForConditionalGeneration.

One tiny random model of the released architecture (2 + 2 layers, small widths, GQA 4:2, an explicit
head_dim 16 != 48 / 4, 30 s encoder windows, 80 ms tokens) written in the released layout (transformers 4
names in two shards, tekken.json, preprocessor_config.json); a batch of a 3 s clip and a 35 s clip (two
encoder windows) goes through `run_parity`: processor prompt ids, log-mel features, audio embeddings,
logits, every layer's attention and greedy tokens, float32 at 1e-4. The weights are drawn at std 0.2
(not 0.02) so that attention is far from uniform and the checks can fail; one test shows they do.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agac_jax.models.interface import PROBS, stack_sown
from agac_jax.models.qwen2_audio.checkpoints import CheckpointError, TensorSource, flatten
from agac_jax.models.voxtral import checkpoints, parity, prompts
from agac_jax.models.voxtral.config import VoxtralConfig
from agac_jax.models.voxtral.model import VoxtralForConditionalGeneration, audio_token_counts, heard_tokens

TINY = {
    "model_type": "voxtral",
    "audio_config": {"hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_mel_bins": 128, "max_source_positions": 1500, "initializer_range": 0.2},
    "text_config": {"hidden_size": 48, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                    "num_key_value_heads": 2, "head_dim": 16, "initializer_range": 0.2},
}
STAGES = ["prompt ids", "log-mel features", "audio tokens (count)", "audio_embeddings", "logits",
          "attention layer 0", "attention layer 1", "greedy tokens (count)"]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("voxtral")
    (root / "tiny.json").write_text(json.dumps(TINY))
    return parity.random_init_directory(root / "tiny.json", seed=0, directory=root / "model")


@pytest.fixture(scope="module")
def report(tiny_dir):
    return parity.run_parity(tiny_dir, clips=parity.synthetic_clips(35.0), max_new_tokens=6)


def test_released_layout(tiny_dir):
    files = sorted(p.name for p in tiny_dir.iterdir())
    assert files == ["config.json", "generation_config.json", "model-00001-of-00002.safetensors",
                     "model-00002-of-00002.safetensors", "model.safetensors.index.json", "preprocessor_config.json",
                     "tekken.json"]
    keys = TensorSource.from_directory(tiny_dir).keys()
    assert "language_model.lm_head.weight" in keys and "audio_tower.conv1.weight" in keys
    assert "multi_modal_projector.linear_1.weight" in keys and not any(k.startswith("model.") for k in keys)


def test_parity_with_transformers(report):
    print("\n" + report.table())
    assert [c.name for c in report.comparisons] == STAGES, report.table()
    assert report.ok, report.table()
    ids, tokens = report.arrays["input_ids"], report.arrays["greedy_tokens"]
    assert ids.shape[0] == 2 and tokens.shape == (2, 6)
    assert [int(np.sum(row == 24)) for row in ids] == [375, 750]  # 3 s: one window; 35 s: two


def test_checks_can_fail(report, tiny_dir):
    """The random model is sharp enough that a plausible porting slip shows: Llama's default RoPE base
    (1e4 instead of Voxtral's 1e8) moves the logits far past the tolerance; attention is not uniform."""
    a = report.arrays
    valid = a["attention_mask"].astype(bool)
    assert valid[1].all()  # the 35 s clip's prompt is the longest: no padding
    sharpest = a["hf_attentions"][:, 1].max(-1)  # [layers, heads, queries]: each query's largest weight
    assert sharpest[..., 375:].mean() > 10.0 / valid.shape[1]  # queries seeing >= 375 keys: far from 1 / keys
    loaded = checkpoints.load_hf_directory(tiny_dir)
    config = loaded.config
    wrong = config.replace(text=dataclasses.replace(config.text, rope_theta=10000.0))
    model = VoxtralForConditionalGeneration(wrong)
    logits = jax.jit(lambda p, *x: model.apply({"params": p}, *x))(
        loaded.params, a["input_ids"], a["attention_mask"], a["input_features"], a["mel_lengths"])
    hf = a["hf_logits"][valid]
    rel = np.abs(np.asarray(logits)[valid] - hf).max() / np.abs(hf).max()
    assert rel > 100 * parity.FLOAT32_TOLERANCE, rel


def test_interface_and_token_grid(report, tiny_dir):
    loaded = checkpoints.load_hf_directory(tiny_dir)
    config, params = loaded.config, loaded.params
    model = VoxtralForConditionalGeneration(config)
    assert (model.audio_token_id, model.num_layers, model.num_heads) == (24, 2, 4)
    assert (model.token_samples, model.frames_per_token, model.tokens_per_window, model.window_frames) == (
        1280, 8, 375, 3000)
    cache = model.init_cache(2, 10)
    assert len(cache) == 2 and cache[0].k.shape == (2, 10, 2, 16)
    a = report.arrays
    audio = jnp.asarray(a["audio_embeddings"])
    assert audio.shape == (2, 750, 48)
    n_tokens = audio_token_counts(a["mel_lengths"], 3000, 375)
    assert list(n_tokens) == [375, 750]
    # A bucket shorter than the window (every frame touching the 3 s clip kept) is completed exactly.
    touching = -(-(48_000 + 200) // 160)
    bucket = a["input_features"][:1, :, : touching + 6]
    encode = jax.jit(lambda p, f, m: model.apply({"params": p}, f, m, method=model.encode_audio))
    short, n_short = encode(params, bucket, a["mel_lengths"][:1])
    assert short.shape == (1, 375, 48) and int(n_short[0]) == 375
    np.testing.assert_allclose(np.asarray(short[0]), a["audio_embeddings"][0, :375], atol=1e-5)
    assert heard_tokens(48_000) == 38  # of the 375 tokens, the first 38 hold the 3 s clip
    # The gate mixes projected 80 ms tokens; decode sows every layer's attention.
    gate = jnp.linspace(0.0, 1.0, 375)
    mixed = model.apply({"params": params}, gate, audio[0, :375], audio[1, :375], method=model.gate_audio)
    np.testing.assert_allclose(np.asarray(mixed[-1]), np.asarray(audio[0, 374]), rtol=1e-6)
    s = a["input_ids"].shape[1]
    mask = jnp.tril(jnp.ones((s, s), bool))[None] & a["attention_mask"].astype(bool)[:, None, :]
    positions = jnp.broadcast_to(jnp.arange(s), (2, s))

    @jax.jit
    def forward(p, ids):
        embeds = model.apply({"params": p}, ids, audio, jnp.asarray(n_tokens), method=model.embed_prompt)
        (hidden, _), state = model.apply({"params": p}, embeds, positions=positions, mask=mask, method=model.decode,
                                         mutable=["attention"])
        return model.apply({"params": p}, hidden, method=model.logits), stack_sown(state, PROBS, 2)

    logits, probs = forward(params, a["input_ids"])
    np.testing.assert_allclose(np.asarray(probs), a["attentions"], atol=1e-6)
    assert logits.dtype == jnp.float32 and logits.shape == (2, s, config.text.vocab_size)
    valid = a["attention_mask"].astype(bool)
    np.testing.assert_allclose(np.asarray(logits)[valid], a["logits"][valid], atol=1e-5)


def test_checkpoint_round_trip(tiny_dir, tmp_path):
    loaded = checkpoints.load_hf_directory(tiny_dir)
    checkpoints.save_hf_directory(tmp_path, loaded.config, loaded.params, loaded.generation_config,
                                  extra_files_from=tiny_dir)
    again = checkpoints.load_hf_directory(tmp_path)
    assert again.config == loaded.config
    first, second = flatten(loaded.params), flatten(again.params)
    assert first.keys() == second.keys()
    for path in first:
        np.testing.assert_array_equal(first[path], second[path], err_msg=path)
    # Both layouts name the same tensors (transformers 4 names, as released, and 5).
    old = {checkpoints.modernize_key(k) for k in TensorSource.from_directory(tiny_dir).keys()}
    assert old == set(TensorSource.from_directory(tmp_path).keys())
    wrong = dataclasses.replace(loaded.config.text, head_dim=12)
    with pytest.raises(CheckpointError, match="mis-shaped"):
        checkpoints.convert_hf_state(TensorSource.from_directory(tmp_path), loaded.config.replace(text=wrong))


def test_released_config_json():
    """The released config.json's fields (transformers 4.54 wrote them; rope_theta inside text_config)."""
    released = {
        "architectures": ["VoxtralForConditionalGeneration"], "model_type": "voxtral", "audio_token_id": 24,
        "projector_hidden_act": "gelu", "hidden_size": 3072,
        "audio_config": {"model_type": "voxtral_encoder", "hidden_size": 1280, "intermediate_size": 5120,
                         "num_hidden_layers": 32, "num_attention_heads": 20, "num_mel_bins": 128,
                         "max_source_positions": 1500, "activation_function": "gelu", "scale_embedding": False,
                         "head_dim": 64, "num_key_value_heads": 20, "vocab_size": 51866},
        "text_config": {"model_type": "llama", "vocab_size": 131072, "hidden_size": 3072, "intermediate_size": 8192,
                        "num_hidden_layers": 30, "num_attention_heads": 32, "num_key_value_heads": 8,
                        "head_dim": 128, "rms_norm_eps": 1e-05, "rope_theta": 100000000.0, "rope_scaling": None,
                        "max_position_embeddings": 131072, "hidden_act": "silu", "attention_bias": False,
                        "mlp_bias": False},
    }
    c = VoxtralConfig.from_hf_dict(released)
    assert (c.audio.d_model, c.audio.encoder_ffn_dim, c.audio.encoder_layers, c.audio.encoder_attention_heads) == (
        1280, 5120, 32, 20)
    t = c.text
    assert (t.attention_head_dim, t.num_key_value_heads, t.rope_theta, t.rms_norm_eps) == (128, 8, 1e8, 1e-5)
    assert (c.frames_per_stack, c.frames_per_token, c.token_samples, c.tokens_per_window) == (4, 8, 1280, 375)
    assert VoxtralConfig.from_hf_dict({"model_type": "voxtral", "audio_token_id": 24}) == c
    assert VoxtralConfig.from_hf_dict(c.to_hf_dict()) == c
    with pytest.raises(ValueError, match="rope_type"):
        VoxtralConfig.from_hf_dict({**released, "text_config": {"rope_scaling": {"rope_type": "yarn"}}})
    with pytest.raises(ValueError, match="attention_bias"):
        VoxtralConfig.from_hf_dict({**released, "text_config": {"attention_bias": True}})


def test_prompt_ids_layout(tiny_dir):
    tok = prompts.load_tokenizer(tiny_dir)
    assert (tok.bos_id, tok.begin_inst_id, tok.end_inst_id, tok.begin_audio_id, tok.audio_id, tok.pad_id) == (
        1, 3, 4, 25, 24, 11)
    assert (tok.tokens_per_window, tok.token_samples) == (375, 1280)
    question = "Is [INST] there a dog?"
    ids = prompts.prompt_ids(tok, question, num_audios=2)
    assert ids[:6] == [1, 3, 25, 24, 25, 24] and ids[-1] == 4
    assert all(i >= 1000 for i in ids[6:-1]) and tok.decode(ids[6:-1]) == question  # control text stays text
    assert [prompts.audio_token_count(n, tok) for n in (1, 480_000, 480_001)] == [375, 375, 750]


def test_the_scorer_scores_voxtral_on_its_80_ms_grid(tiny_dir):
    """The model-agnostic Scorer takes the Voxtral directory as it is (the family told by config.json):
    each clip fills one 30 s window of 375 tokens, only the tokens that read the clip are gated, frames
    follow the clip (not its window), and the occlusion score of token t is the drop of the answer's
    log-probability when token t's embedding is silence's, as the model computes it directly."""
    from agac_jax.codec.base import num_frames
    from agac_jax.models.qwen2_audio.model import causal_mask
    from agac_jax.scoring.scorer import POSTER_LOCAL_SCORE, Scorer, ScoringConfig

    config = ScoringConfig(**POSTER_LOCAL_SCORE, occlusion_chunk=64, max_new_tokens=3, batch_size=2, rates=(50,),
                           keep=0.5)
    scorer = Scorer.from_directory(tiny_dir, config)
    assert scorer.kind == "voxtral" and scorer.audio_token_count(3 * 16000) == 375
    clips = [c[: int(s * 16000)] for c, s in zip(parity.synthetic_clips(), (3.0, 7.0))]
    out = scorer.score(clips, ["What is in the audio?"] * 2)
    for clip, s in zip(clips, out):
        heard = -(-len(clip) // 1280)
        assert s.num_tokens == 375 and int(s.slot_valid.sum()) == heard
        assert np.all(s.local[heard:] == 0) and np.any(s.local[:heard] != 0)
        assert len(s.frames[50]) == num_frames(len(clip), 50) and s.keep[50].max() < len(s.frames[50])

    s, clip = out[0], clips[0]
    model, variables = scorer.model, {"params": scorer.params}
    inputs = scorer.adapter.inputs([clip], [s.question], 3000, padding_side="right", silence=True)
    audio, n = model.apply(variables, inputs.features, inputs.mel_lengths, method=model.encode_audio)
    quiet, _ = model.apply(variables, inputs.silence_features, inputs.mel_lengths, method=model.encode_audio)
    ids = jnp.asarray(np.concatenate([s.input_ids, s.answer_ids])[None], jnp.int32)

    def logp(gate):
        gated = model.apply(variables, gate, audio[0], quiet[0], method=model.gate_audio)
        embeds = model.apply(variables, ids, gated[None], n, method=model.embed_prompt)
        hidden, _ = model.apply(variables, embeds, positions=jnp.arange(ids.shape[1])[None],
                                mask=causal_mask(jnp.ones_like(ids)), method=model.decode)
        logits = model.apply(variables, hidden, method=model.logits)[0, len(s.input_ids) - 1:-1]
        return float(jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.asarray(s.answer_ids)[:, None], 1).sum())

    full = logp(jnp.ones(375))
    np.testing.assert_allclose(s.logp_full, full, rtol=1e-4, atol=1e-5)
    for t in (0, 20, -(-len(clip) // 1280) - 1):
        expected = full - logp(jnp.ones(375).at[t].set(0.0))
        np.testing.assert_allclose(s.local[t], expected, rtol=1e-3, atol=1e-4)


def test_bfloat16_weights_stay_within_the_stated_bf16_tolerance(tmp_path):
    """`param_dtype="bfloat16"` holds every weight in bfloat16 (the 3B's 19 GB halved) and the logits stay
    within the bf16-weights tolerance of `launch.parity` (1e-2 of their largest magnitude), on weights of
    the released models' scale (std 0.02; the parity model's 0.2 sharpens every rounding ten-fold)."""
    from agac_jax.models.qwen2_audio.checkpoints import flatten as flat

    tiny = json.loads(json.dumps(TINY))
    for section in ("audio_config", "text_config"):
        tiny[section]["initializer_range"] = 0.02
    (tmp_path / "tiny.json").write_text(json.dumps(tiny))
    tiny_dir = parity.random_init_directory(tmp_path / "tiny.json", seed=0, directory=tmp_path / "model")

    full = checkpoints.load_hf_directory(tiny_dir)
    half = checkpoints.load_hf_directory(tiny_dir, param_dtype="bfloat16")
    assert {str(v.dtype) for v in flat(half.params).values()} == {"bfloat16"}
    clip = parity.synthetic_clips()[0][:32000]
    tok = prompts.load_tokenizer(tiny_dir)
    batch = prompts.build_prompts(tok, "What is in the audio?", clip)
    args = (jnp.asarray(batch.input_ids), jnp.asarray(batch.attention_mask), jnp.asarray(batch.input_features),
            jnp.asarray(batch.mel_lengths))
    logits = {name: np.asarray(VoxtralForConditionalGeneration(loaded.config).apply({"params": loaded.params}, *args))
              for name, loaded in (("full", full), ("half", half))}
    scale = np.abs(logits["full"]).max()
    assert np.abs(logits["half"] - logits["full"]).max() <= 1e-2 * scale
