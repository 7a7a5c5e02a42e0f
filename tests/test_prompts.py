"""Offline word tokenizers and Qwen2-Audio prompts, checked against Qwen2AudioProcessor itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models
from transformers import AutoTokenizer, PreTrainedTokenizerFast, Qwen2AudioProcessor

from agac_jax.models.qwen2_audio.prompts import (
    PromptError,
    PromptFormat,
    build_prompts,
    conversation,
    expand_audio_ids,
    load_prompt_format,
)
from agac_jax.models.qwen2_audio.tokenizer import (
    AUDIO_TOKEN,
    QWEN2_AUDIO_CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    build_word_tokenizer,
    save_processor_files,
)

WORDS = ["Is", "there", "a", "dog", "barking", "?", "Does", "someone", "speak", "Yes", "No"]
QUESTIONS = ["Is there a dog barking?", "Does someone speak?", "Is there a dog?"]
CLIP_SAMPLES = (8_000, 59_200, 160_000)  # 0.5 s, 3.7 s, 10 s


def make_clips(lengths=CLIP_SAMPLES) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(n)).astype(np.float32) for n in lengths]


@pytest.fixture(scope="module", params=["chat_template", "no_template"])
def saved(request, tmp_path_factory) -> tuple[PreTrainedTokenizerFast, Qwen2AudioProcessor]:
    """(our tokenizer, the processor loaded from the same directory), with a chat template file and without
    one (the processor's default template then)."""
    out_dir = tmp_path_factory.mktemp(request.param)
    template = QWEN2_AUDIO_CHAT_TEMPLATE if request.param == "chat_template" else None
    tokenizer = save_processor_files(out_dir, WORDS, num_mel_bins=128, chat_template=template)
    return tokenizer, Qwen2AudioProcessor.from_pretrained(out_dir)


def render_prompt(processor: Qwen2AudioProcessor, question: str, num_audios: int = 1) -> str:
    """The processor's own prompt text for the model card's conversation."""
    return processor.apply_chat_template(conversation(question, num_audios), tokenize=False, add_generation_prompt=True)


def processor_reference(processor: Qwen2AudioProcessor, texts: list[str], clips: list[np.ndarray], **kwargs):
    return processor(text=texts, audio=clips, return_tensors="np", padding=True, sampling_rate=16_000, **kwargs)


def test_tokenizer_loads_offline_with_fixed_special_ids(tmp_path: Path) -> None:
    build_word_tokenizer(WORDS, tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS)) == list(range(len(SPECIAL_TOKENS)))
    assert tokenizer.pad_token == "<|endoftext|>" and tokenizer.unk_token == "<unk>"
    assert tokenizer.padding_side == "right"
    assert tokenizer.chat_template is None


def test_tokenizer_encodes_words_specials_and_unknowns(tmp_path: Path) -> None:
    tokenizer = build_word_tokenizer(WORDS, tmp_path)
    ids = tokenizer("<|audio_bos|><|AUDIO|><|audio_eos|>Is there a cat barking?")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens == ["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>", "Is", "there", "a", "<unk>", "barking", "?"]
    assert tokenizer.decode(ids[3:]) == "Is there a <unk> barking ?"
    assert tokenizer.decode(ids, skip_special_tokens=True) == "Is there a barking ?"
    assert tokenizer.convert_ids_to_tokens(tokenizer("Audio 12:")["input_ids"]) == ["Audio", "1", "2", ":"]


@pytest.mark.parametrize("words", [["two words"], ["don't"], [""], "dog"])
def test_tokenizer_rejects_words_it_could_never_produce(tmp_path: Path, words) -> None:
    with pytest.raises((ValueError, TypeError), match="words"):
        build_word_tokenizer(words, tmp_path)


def test_processor_loads_and_finds_audio_token(saved) -> None:
    tokenizer, processor = saved
    assert processor.audio_token == AUDIO_TOKEN
    assert processor.audio_token_id == tokenizer.convert_tokens_to_ids(AUDIO_TOKEN) == 3
    assert processor.feature_extractor.feature_size == 128


def test_both_layouts_take_the_audio_template(saved) -> None:
    tokenizer, processor = saved
    fmt = load_prompt_format(tokenizer.name_or_path)
    assert fmt.kind == "chat" and fmt.template == processor.chat_template == QWEN2_AUDIO_CHAT_TEMPLATE
    assert load_prompt_format(tokenizer.name_or_path, "raw") == PromptFormat.raw()


@pytest.mark.parametrize("padding_side", [None, "left"])
def test_build_prompts_equals_processor(saved, padding_side) -> None:
    tokenizer, processor = saved
    clips = make_clips()
    texts = [render_prompt(processor, question) for question in QUESTIONS]
    ref = processor_reference(processor, texts, clips, **({"padding_side": padding_side} if padding_side else {}))

    batch = build_prompts(tokenizer, QUESTIONS, clips, padding_side=padding_side)

    np.testing.assert_array_equal(batch.input_ids, ref["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, ref["attention_mask"])
    np.testing.assert_array_equal(batch.feature_attention_mask, ref["feature_attention_mask"])
    np.testing.assert_allclose(batch.input_features, ref["input_features"], atol=5e-5, rtol=0)
    assert batch.input_ids.dtype == ref["input_ids"].dtype
    assert batch.feature_attention_mask.dtype == ref["feature_attention_mask"].dtype
    audio_id = tokenizer.convert_tokens_to_ids(AUDIO_TOKEN)
    np.testing.assert_array_equal(batch.num_audio_tokens, (ref["input_ids"] == audio_id).sum(-1))
    np.testing.assert_array_equal(batch.num_audio_tokens, [12, 92, 250])
    pad_column = 0 if padding_side == "left" else -1
    assert batch.attention_mask[:, pad_column].tolist() != [1, 1, 1]


def test_bucketed_features_keep_ids_and_equal_reference_prefix(saved) -> None:
    tokenizer, processor = saved
    clips = make_clips()
    texts = [render_prompt(processor, question) for question in QUESTIONS]
    ref = processor_reference(processor, texts, clips)

    batch = build_prompts(tokenizer, QUESTIONS, clips, pad_to_frames=1000)

    assert batch.input_features.shape == (3, 128, 1000)
    np.testing.assert_array_equal(batch.input_ids, ref["input_ids"])
    np.testing.assert_array_equal(batch.feature_attention_mask, ref["feature_attention_mask"][:, :1000])
    np.testing.assert_allclose(batch.input_features, ref["input_features"][..., :1000], atol=5e-5, rtol=0)


def test_several_clips_in_one_prompt_equal_processor(saved) -> None:
    tokenizer, processor = saved
    clips = make_clips((16_000, 24_000, 8_000))
    questions = ["Does someone speak?", "Is there a dog?"]
    texts = [render_prompt(processor, questions[0], 2), render_prompt(processor, questions[1])]
    ref = processor_reference(processor, texts, clips)

    batch = build_prompts(tokenizer, questions, [clips[:2], clips[2]], pad_to_frames=500)

    np.testing.assert_array_equal(batch.input_ids, ref["input_ids"])
    np.testing.assert_array_equal(batch.attention_mask, ref["attention_mask"])
    np.testing.assert_array_equal(batch.num_audio_tokens, [25, 37, 12])


def test_single_question_and_clip(saved) -> None:
    tokenizer, processor = saved
    clip = make_clips((40_000,))[0]
    ref = processor_reference(processor, [render_prompt(processor, "Is there a dog?")], [clip])
    batch = build_prompts(tokenizer, "Is there a dog?", clip, pad_to_frames=300)
    np.testing.assert_array_equal(batch.input_ids, ref["input_ids"])
    assert batch.input_features.shape == (1, 128, 300)


def test_expand_audio_ids_in_batch_order() -> None:
    rows = [[7, 3, 8, 3], [3, 9]]
    assert expand_audio_ids(rows, 3, [1, 2, 3]) == [[7, 3, 8, 3, 3], [3, 3, 3, 9]]
    with pytest.raises(ValueError, match="3 <\\|AUDIO\\|> placeholders but 2 clips"):
        expand_audio_ids(rows, 3, [1, 2])


def test_prompt_errors(saved) -> None:
    tokenizer, _ = saved
    clip = make_clips((8_000,))[0]
    with pytest.raises(ValueError, match="2 questions but clips for 1 prompts"):
        build_prompts(tokenizer, ["a", "b"], [clip])
    with pytest.raises(ValueError, match="clips\\[0\\] is empty"):
        build_prompts(tokenizer, ["a"], [[]])
    with pytest.raises(ValueError, match="padding_side"):
        build_prompts(tokenizer, "a", clip, padding_side="middle")
    with pytest.raises(ValueError, match="pad_to_frames"):
        build_prompts(tokenizer, "a", clip, pad_to_frames=10)
    with pytest.raises(TypeError, match="question must be a string"):
        build_prompts(tokenizer, [3], [clip])


def test_tokenizer_without_audio_token_is_refused() -> None:
    plain = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>")),
        unk_token="<unk>",
        pad_token="<unk>",
    )
    with pytest.raises(PromptError, match="no <\\|AUDIO\\|> token"):
        build_prompts(plain, "a", np.zeros(100, np.float32), prompt_format=PromptFormat.chat())
