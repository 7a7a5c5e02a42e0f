"""The shipped tiny model (assets/tiny_qwen2audio): loads in Flax and transformers, agrees, and listens."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, Qwen2AudioForConditionalGeneration, Qwen2AudioProcessor

from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.data.synthetic_audio import synthetic
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration as FlaxQwen2Audio
from agac_jax.models.qwen2_audio.prompts import conversation
from agac_jax.models.qwen2_audio.tokenizer import AUDIO_TOKEN, IM_END
from agac_jax.training.evaluation import evaluate_generation

SHIPPED = Path(__file__).resolve().parents[1] / "assets" / "tiny_qwen2audio"
RTOL = 1e-4  # relative to the largest logit magnitude


@pytest.fixture(scope="module")
def loaded() -> checkpoints.LoadedModel:
    return checkpoints.load_hf_directory(SHIPPED)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(SHIPPED)


@pytest.fixture(scope="module")
def test_samples() -> list[synthetic.Sample]:
    return synthetic.generate_split("test", 12, seed=0)


def test_directory_is_small_and_its_ids_agree(loaded, tokenizer) -> None:
    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert size < 4 * 2**20, f"{SHIPPED} holds {size} bytes"
    config = loaded.config
    assert config.audio.max_source_positions == 1500
    assert config.text.vocab_size == len(tokenizer)
    assert config.audio_token_id == tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    generation = json.loads((SHIPPED / "generation_config.json").read_text())
    assert generation["eos_token_id"] == tokenizer.convert_tokens_to_ids(IM_END) == config.text.eos_token_id
    assert generation["pad_token_id"] == tokenizer.pad_token_id == config.text.pad_token_id


def test_flax_logits_equal_transformers_on_a_processor_prompt(loaded, test_samples) -> None:
    processor = Qwen2AudioProcessor.from_pretrained(SHIPPED)
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(SHIPPED, attn_implementation="eager").eval()
    sample = test_samples[0]
    text = processor.apply_chat_template(conversation(sample.question), tokenize=False, add_generation_prompt=True)
    inputs = processor(text=[text], audio=[sample.load_waveform()], return_tensors="np", padding=True,
                       sampling_rate=synthetic.SAMPLE_RATE)
    assert inputs["input_features"].shape[-1] == 3000
    with torch.no_grad():
        expected = hf(**{k: torch.tensor(v) for k, v in inputs.items()}).logits.numpy()
    model = FlaxQwen2Audio(loaded.config)
    with jax.default_matmul_precision("highest"):
        actual = jax.jit(lambda p, *x: model.apply({"params": p}, *x))(  # jitted: not a compilation per primitive
            loaded.params, inputs["input_ids"], inputs["attention_mask"], inputs["input_features"],
            inputs["feature_attention_mask"].sum(-1))
    scale = np.abs(expected).max()
    error = np.abs(np.asarray(actual) - expected).max() / scale
    assert error <= RTOL, f"max relative difference {error:.2e}"


def test_shipped_model_answers_existence_questions(loaded, tokenizer, test_samples) -> None:
    existence = [s for s in test_samples if s.kind == synthetic.EXISTENCE][:8]
    assert len(existence) == 8 and {s.answer for s in existence} == {"yes", "no"}
    outcome = evaluate_generation(loaded.config, loaded.params, loaded.generation_config, tokenizer, existence,
                                  pad_to_frames=1200, batch_size=8)
    assert outcome.num_unknown == 0
    assert outcome.accuracy >= 7 / 8, outcome.predictions
