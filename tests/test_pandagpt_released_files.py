"""PandaGPT from files in its released layout (pretrained_ckpt/README.md): `imagebind_huge.pth`, a Vicuna
v0 directory of fp16 `pytorch_model-*.bin` shards with a sentencepiece `tokenizer.model` and no
tokenizer.json, and the fp16 delta `pytorch_model.pt`, all tiny and random; the tokenizer is a real
sentencepiece model trained here with Llama's special ids (unk 0, bos 1, eos 2) and byte fallback.

Checked: the tokenizer reads as PandaGPT's (sentencepiece's own ids), conversion carries it beside the
weights, the scorer and `launch.parity` load it and use PandaGPT's real prompt, and a directory without
a tokenizer stops the parity check with one `error:` line instead of a stand-in prompt."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import sentencepiece as spm
import torch
import transformers

from agac_jax.cli import errors
from agac_jax.models.pandagpt.checkpoints import (MissingTokenizerError, VicunaTokenizer, convert_to_directory,
                                          load_tokenizer)
from agac_jax.models.pandagpt.imagebind import ImageBindConfig
from agac_jax.models.llama import LlamaConfig
from agac_jax.models.pandagpt.model import PROMPT_START, PandaGPTConfig, prompt_ids
from agac_jax.models.pandagpt.parity import random_init_directory, run_parity
from agac_jax.scoring.scorer import Scorer
from agac_jax.scoring.scorer import ScoringConfig
from tests.imagebind_reference import tiny_imagebind
from tests.test_pandagpt_parity import TINY

VOCAB = 300  # 3 special + 256 byte pieces + the corpus' characters and merges
QUESTION = "is there a dog in the video?"
CORPUS = ["### Human: <Img> </Img> is there a dog in the video?\n### Assistant: yes, a dog is barking.",
          "### Human: <Img> </Img> is the man speaking in this audio?\n### Assistant: no, there is music."]
IB = ImageBindConfig(out_embed_dim=24, audio_embed_dim=32, audio_num_blocks=2, audio_num_heads=4,
                     vision_embed_dim=32, vision_num_blocks=2, vision_num_heads=4)
LLAMA = LlamaConfig(vocab_size=VOCAB + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
# as PandaGPT-7B (Vicuna v0: 32001 rows, 32000 pieces): the placeholder is the one id past the tokenizer's
CONFIG = PandaGPTConfig(imagebind=IB, llama=LLAMA, lora_r=4, lora_alpha=8.0, audio_token_id=VOCAB)


def train_tokenizer_model(path) -> None:
    """A Llama-style sentencepiece BPE model at `path`: unk 0, bos 1, eos 2, no pad, byte fallback,
    a dummy prefix, whitespace kept as written (LLaMA's trainer settings, tiny)."""
    prefix = path.with_suffix("")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 50), model_prefix=str(prefix), vocab_size=VOCAB, model_type="bpe",
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, byte_fallback=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", character_coverage=1.0,
        split_digits=True, hard_vocab_limit=False, minloglevel=2)
    prefix.with_suffix(".vocab").unlink()
    assert prefix.with_suffix(".model") == path


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    """(root, vicuna directory): the three released pieces written as PandaGPT's README lays them out."""
    root = tmp_path_factory.mktemp("pretrained_ckpt")
    imagebind, _ = tiny_imagebind(seed=0, out_embed_dim=24)  # every modality: the converter drops the rest
    torch.save(imagebind.state_dict(), root / "imagebind_huge.pth")
    vicuna = root / "vicuna_ckpt" / "7b_v0"
    vicuna.mkdir(parents=True)
    torch.manual_seed(1)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA.to_hf_dict()))
    state = {k: v.detach().half() for k, v in llama.state_dict().items()}
    names = sorted(state)
    shards = {f"pytorch_model-0000{i + 1}-of-00002.bin": names[i::2] for i in range(2)}
    for shard, keys in shards.items():
        torch.save({k: state[k] for k in keys}, vicuna / shard)
    (vicuna / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}))
    train_tokenizer_model(vicuna / "tokenizer.model")
    delta = {"llama_proj.weight": torch.randn(32, 24).half(), "llama_proj.bias": torch.randn(32).half()}
    for layer in range(2):
        for proj in "qkvo":
            key = f"llama_model.base_model.model.model.layers.{layer}.self_attn.{proj}_proj.lora_"
            delta[key + "A.weight"] = (0.3 * torch.randn(4, 32)).half()
            delta[key + "B.weight"] = (0.3 * torch.randn(32, 4)).half()
    (root / "pandagpt_ckpt" / "7b").mkdir(parents=True)
    torch.save(delta, root / "pandagpt_ckpt" / "7b" / "pytorch_model.pt")
    return root, vicuna


@pytest.fixture(scope="module")
def converted(released, tmp_path_factory):
    root, vicuna = released
    out = tmp_path_factory.mktemp("pandagpt-7b")
    convert_to_directory(root / "imagebind_huge.pth", vicuna, root / "pandagpt_ckpt" / "7b" / "pytorch_model.pt",
                         out, CONFIG, allow_pickle=True)
    return out


def expected_prompt(sp: spm.SentencePieceProcessor, question: str) -> list[int]:
    """PandaGPT's prompt as its slow LlamaTokenizer builds it: sentencepiece on each text piece."""
    return [1, *sp.encode(PROMPT_START), CONFIG.audio_token_id, *sp.encode("</Img> " + question + "\n### Assistant:")]


def test_the_vicuna_tokenizer_model_reads_as_pandagpt_reads_it(released, tmp_path):
    _, vicuna = released
    assert not (vicuna / "tokenizer.json").exists()
    sp = spm.SentencePieceProcessor(model_file=str(vicuna / "tokenizer.model"))
    assert [sp.unk_id(), sp.bos_id(), sp.eos_id()] == [0, 1, 2]
    tokenizer = load_tokenizer(vicuna)
    assert isinstance(tokenizer, VicunaTokenizer)
    assert (tokenizer.unk_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    ids = prompt_ids(tokenizer, QUESTION, 1, CONFIG.audio_token_id)
    assert ids == expected_prompt(sp, QUESTION)
    answer = sp.encode("yes, a dog\nis barking über.")
    assert sp.piece_to_id("<0xC3>") in answer  # a character the corpus lacks: byte-fallback pieces
    assert tokenizer.decode(answer + [2], skip_special_tokens=True) == "yes, a dog\nis barking über."
    assert tokenizer("yes").input_ids == [1, *sp.encode("yes")]
    # early LLaMA conversions wrote blank special tokens: Llama's are used then
    blank = tmp_path / "blank"
    blank.mkdir()
    shutil.copyfile(vicuna / "tokenizer.model", blank / "tokenizer.model")
    (blank / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "", "eos_token": "", "unk_token": "", "tokenizer_class": "LlamaTokenizer"}))
    again = load_tokenizer(blank)
    assert (again.unk_token_id, again.bos_token_id, again.eos_token_id) == (0, 1, 2)
    assert prompt_ids(again, QUESTION, 1, CONFIG.audio_token_id) == ids


def test_converted_release_scores_and_passes_parity_with_pandagpts_prompt(released, converted):
    _, vicuna = released
    assert sorted(p.name for p in converted.iterdir()) == ["model.safetensors", "pandagpt_config.json",
                                                           "tokenizer.model"]
    sp = spm.SentencePieceProcessor(model_file=str(vicuna / "tokenizer.model"))
    expected = expected_prompt(sp, QUESTION)
    scorer = Scorer.from_directory(converted, ScoringConfig(max_text_tokens=48, max_new_tokens=2,
                                                                    buckets_seconds=(4,), batch_size=1))
    assert isinstance(scorer.tokenizer, VicunaTokenizer)
    assert scorer.adapter.inputs([np.zeros(16000, np.float32)], [QUESTION], 400, padding_side="right",
                                 silence=False).input_ids[0].tolist() == expected
    assert scorer.audio_offset == expected.index(CONFIG.audio_token_id)
    clip = (0.1 * np.random.default_rng(0).standard_normal(3 * 16000)).astype(np.float32)
    report = run_parity(converted, [clip], [QUESTION], max_new_tokens=2)
    assert report.ok, report.table()
    assert report.arrays["prompt_ids"].tolist() == expected
    assert report.arrays["logits"].shape == (len(expected), VOCAB + 1)


def test_parity_without_a_tokenizer_stops_with_one_error_line(tmp_path, capsys):
    directory = random_init_directory(TINY, seed=1, out=tmp_path / "model")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (directory / name).unlink(missing_ok=True)
    with pytest.raises(MissingTokenizerError, match="holds no tokenizer"):
        run_parity(directory, max_new_tokens=1)
    with pytest.raises(SystemExit) as exit_info:
        errors.main(lambda argv: run_parity(directory, max_new_tokens=1))(["parity"])
    assert exit_info.value.code == errors.EXIT_USER_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {directory} holds no tokenizer")
