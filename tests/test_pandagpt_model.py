"""PandaGPT as a whole (agac_jax/models/pandagpt/model.py) against a PyTorch composition of its pieces, tiny random:
imagebind-unofficial's audio branch, a torch Linear projection, transformers' LlamaForCausalLM with
peft's LoRA; the LoRA merge against peft's own."""

from __future__ import annotations

import copy
import functools

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers

from agac_jax.models.pandagpt import fbank as kf
from agac_jax.models.pandagpt.checkpoints import convert_pandagpt, merge_lora
from agac_jax.models.pandagpt.imagebind import ImageBindConfig
from agac_jax.models.llama import LlamaConfig, LlamaForCausalLM
from agac_jax.models.pandagpt.model import PandaGPT, PandaGPTConfig, init_params, slot_sample_ranges, unheard_mask
from agac_jax.models.pandagpt.checkpoints import llama_params_from_hf
from tests.imagebind_reference import state_dict_numpy, tiny_imagebind

RTOL = 1e-4
IB = ImageBindConfig(out_embed_dim=24, audio_embed_dim=32, audio_num_blocks=2, audio_num_heads=4,
                     vision_embed_dim=32, vision_num_blocks=2, vision_num_heads=4)
LLAMA = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=64)
CONFIG = PandaGPTConfig(imagebind=IB, llama=LLAMA, lora_r=4, lora_alpha=8.0, audio_token_id=63)


def rel_err(actual, expected):
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    return np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-12)


@pytest.fixture(scope="module")
def torch_parts():
    imagebind, modality = tiny_imagebind(seed=0, out_embed_dim=24)
    torch.manual_seed(1)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA.to_hf_dict(), attn_implementation="eager"))
    base_state = {k: v.detach().numpy().copy() for k, v in llama.state_dict().items()}
    lora = peft.get_peft_model(llama, peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                                                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:  # peft starts B at zero: make the adapters do something
                p.normal_(0.0, 0.3)
    lora.eval()
    proj = torch.nn.Linear(24, 32)
    delta = {f"llama_model.{k}": v.detach().numpy() for k, v in lora.state_dict().items() if "lora_" in k}
    delta.update({f"llama_proj.{k}": v.detach().numpy() for k, v in proj.state_dict().items()})
    return imagebind, modality, lora, proj, base_state, delta


def test_lora_merge_equals_peft(torch_parts):
    _, _, lora, _, base_state, delta = torch_parts
    merged = merge_lora(base_state, delta, r=4, alpha=8.0)
    with torch.no_grad():
        ids = torch.tensor([[1, 5, 9, 33, 7, 2]])
        expected_logits = lora(input_ids=ids).logits.numpy()
        peft_merged = {k: v.numpy() for k, v in copy.deepcopy(lora).merge_and_unload().state_dict().items()}
    for layer in range(2):
        for proj in "qkvo":
            key = f"model.layers.{layer}.self_attn.{proj}_proj.weight"
            a = delta[f"llama_model.base_model.model.{key.replace('.weight', '')}.lora_A.default.weight"]
            b = delta[f"llama_model.base_model.model.{key.replace('.weight', '')}.lora_B.default.weight"]
            assert np.abs(merged[key] - base_state[key]).max() > 1e-3
            np.testing.assert_allclose(merged[key], base_state[key] + b @ a * 2.0, rtol=1e-6, atol=1e-7)
            np.testing.assert_allclose(merged[key], peft_merged[key], rtol=1e-6, atol=1e-6)
    got = LlamaForCausalLM(LLAMA).apply({"params": llama_params_from_hf(merged)}, jnp.asarray(ids.numpy()))
    assert rel_err(got, expected_logits) <= RTOL  # merged weights in Flax == peft's adapters applied at run time


def _torch_answer_logp(parts, fbank_clip, fbank_silence, gate, ids, answer):
    imagebind, modality, lora, proj, _, _ = parts
    with torch.no_grad():
        g = torch.tensor(gate).reshape(CONFIG.clips, 1, -1)
        mixed = g * torch.tensor(fbank_clip) + (1 - g) * torch.tensor(fbank_silence)  # [clips, mels, 204]
        tokens = imagebind.modality_preprocessors[modality.AUDIO](audio=mixed[:, None])["trunk"]["tokens"]
        vec = imagebind.modality_heads[modality.AUDIO](imagebind.modality_trunks[modality.AUDIO](tokens=tokens))
        av = proj(torch.nn.functional.normalize(vec, dim=-1).mean(0))
        embed = lora.get_input_embeddings()
        seq = torch.tensor(ids + answer)
        embeds = embed(seq)
        embeds[ids.index(CONFIG.audio_token_id)] = av
        logits = lora(inputs_embeds=embeds[None]).logits[0]
        logp = torch.log_softmax(logits, -1)
        rows = torch.arange(len(ids) - 1, len(ids) + len(answer) - 1)
        return float(logp[rows, torch.tensor(answer)].sum())


def _flax_answer_logp(params, fbank_clip, fbank_silence, gate, ids, answer):
    return float(_flax_answer_logp_jitted(params, jnp.asarray(np.concatenate(list(fbank_clip), axis=1))[None],
                                          jnp.asarray(np.concatenate(list(fbank_silence), axis=1))[None],
                                          jnp.asarray(gate), tuple(ids), tuple(answer)))


@functools.partial(jax.jit, static_argnames=("ids", "answer"))  # one compilation, not one per eager primitive
def _flax_answer_logp_jitted(params, fbank_clip, fbank_silence, gate, ids, answer):
    model = PandaGPT(CONFIG)
    v = {"params": params}
    state, _ = model.apply(v, fbank_clip, jnp.array([612]), method=model.encode_audio)
    silence, _ = model.apply(v, fbank_silence, jnp.array([612]), method=model.encode_audio)
    token = model.apply(v, gate, state[0], silence[0], method=model.gate_audio)
    seq = jnp.asarray(ids + answer)
    embeds = model.apply(v, seq[None], method=model.embed_tokens)[0]
    embeds = jnp.where((seq == CONFIG.audio_token_id)[:, None], token, embeds)
    n = len(seq)
    hidden, _ = model.apply(v, embeds[None], positions=jnp.arange(n)[None], mask=jnp.tril(jnp.ones((n, n), bool))[None],
                            method=model.decode)
    logp = jax.nn.log_softmax(model.apply(v, hidden[0], method=model.logits), -1)
    rows = np.arange(len(ids) - 1, len(ids) + len(answer) - 1)
    return logp[rows, np.asarray(answer)].sum()


def test_answer_logp_matches_the_torch_composition_under_gates(torch_parts):
    imagebind, _, lora, _, base_state, delta = torch_parts
    params = convert_pandagpt(state_dict_numpy(imagebind), base_state, delta, CONFIG)
    wave = np.random.default_rng(0).standard_normal(3 * 16000).astype(np.float32) * 0.1
    clip, bounds = kf.imagebind_clip_features(wave)
    silence, _ = kf.imagebind_clip_features(np.zeros_like(wave))
    ids = [1, 10, 11, 12, CONFIG.audio_token_id, 20, 21, 22, 23]  # BOS, '### Human: <Img>', AV, question...
    answer = [30, 31, 2]
    gates = {"clip": np.ones(612, np.float32), "silence": np.zeros(612, np.float32),
             "random": np.random.default_rng(1).uniform(size=612).astype(np.float32)}
    values = {}
    for name, gate in gates.items():
        expected = _torch_answer_logp(torch_parts, clip, silence, gate, ids, answer)
        got = _flax_answer_logp(params, clip, silence, gate, ids, answer)
        assert abs(got - expected) <= RTOL * abs(expected), (name, got, expected)
        values[name] = got
    assert abs(values["clip"] - values["silence"]) > 1e-4  # the gate reaches the answer
    assert bounds.tolist() == [[0, 32000], [8000, 40000], [16000, 48000]]


def test_global_scores_and_unheard_audio():
    params = jax.jit(lambda k: init_params(CONFIG, k))(jax.random.key(0))
    model = PandaGPT(CONFIG)
    wave = np.random.default_rng(2).standard_normal(10 * 16000).astype(np.float32)
    clip, bounds = kf.imagebind_clip_features(wave)
    scores = jax.jit(lambda p, x: model.apply({"params": p}, x, method=model.global_scores))(
        params, jnp.asarray(np.concatenate(list(clip), axis=1))[None])
    assert scores.shape == (1, 612)
    per_clip = np.asarray(scores).reshape(3, 204)
    np.testing.assert_allclose(per_clip.sum(1), IB.audio_num_blocks * IB.audio_num_heads, rtol=1e-5)  # rows sum to 1
    assert np.all(per_clip[:, 196:] < per_clip[:, 16:180].min())  # the last 8 frames are read by one patch or none
    ranges = slot_sample_ranges(bounds, IB)
    assert ranges[0].tolist() == [0, 400] and ranges[204 + 197].tolist() == [64000 + 197 * 160, 64000 + 197 * 160 + 400]
    assert ranges[204 + 198, 0] == ranges[204 + 198, 1]  # padding slots read nothing
    unheard = unheard_mask(bounds, wave.shape[0])
    assert unheard[32000:64000].all() and unheard[96000:128000].all() and not unheard[:32000].any()


def test_pickles_convert_to_safetensors_only_when_allowed(torch_parts, tmp_path):
    from agac_jax.models.pandagpt.checkpoints import convert_to_directory, load_pandagpt_directory

    imagebind, _, lora, proj, base_state, delta = torch_parts
    torch.save(imagebind.state_dict(), tmp_path / "imagebind_huge.pth")
    vicuna = tmp_path / "vicuna"
    vicuna.mkdir()
    torch.save({k: torch.tensor(v) for k, v in base_state.items()}, vicuna / "pytorch_model-00001-of-00001.bin")
    torch.save({k: torch.tensor(v) for k, v in delta.items()}, tmp_path / "pytorch_model.pt")
    args = (tmp_path / "imagebind_huge.pth", vicuna, tmp_path / "pytorch_model.pt", tmp_path / "out", CONFIG)
    with pytest.raises(ValueError, match="allow_pickle"):
        convert_to_directory(*args)
    params = convert_to_directory(*args, allow_pickle=True)
    config, loaded = load_pandagpt_directory(tmp_path / "out")
    assert config == CONFIG
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.safetensors", "pandagpt_config.json"]
    expected = convert_pandagpt(state_dict_numpy(imagebind), base_state, delta, CONFIG)
    for tree in (params, loaded):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), tree, expected)
