"""Tests of the evaluation metrics on small hand-checked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agac_jax.eval import flops, metrics


# Replies in the style real audio-language models give, read as lmms-eval's yes/no parser (Otter's)
# reads them: "yes"/"no" after lower-casing, stripping and removing ".", "y"/"n" alone, else the
# first four characters.
LMMS_EVAL_READINGS = [
    ("Yes", "yes"),
    ("yes", "yes"),
    ("Yes.", "yes"),
    ("YES", "yes"),
    (" yes \n", "yes"),
    ("Yes, there is a dog barking.", "yes"),
    ("Yes, a dog is barking in the background.", "yes"),
    ("Yes!", "yes"),
    ("y", "yes"),
    ("Y.", "yes"),
    ("Yesterday it rained; yes.", "yes"),  # the first four characters hold "yes"
    ("No", "no"),
    ("no", "no"),
    ("No.", "no"),
    ("NO", "no"),
    ("Nope.", "no"),
    ("No, there is no dog barking.", "no"),
    ("No, it is not.", "no"),
    ("n", "no"),
    ("No? Yes!", "no"),
    ("Not sure", "no"),  # Otter's quirk, kept so that figures compare
    ("Nothing is heard.", "no"),
    ("Yeah", "unknown"),
    ("Yep", "unknown"),
    ("Sure", "unknown"),
    ("Absolutely.", "unknown"),
    ("The answer is: No", "unknown"),
    ("There is no dog barking in the audio.", "unknown"),
    ("I think so.", "unknown"),
    ("Dog", "unknown"),
    ("", "unknown"),
    ("...", "unknown"),
    ("x", "unknown"),
]


@pytest.mark.parametrize(("reply", "expected"), LMMS_EVAL_READINGS)
def test_parse_answer_reads_replies_as_lmms_eval_does(reply: str, expected: str) -> None:
    assert metrics.parse_answer(reply) == expected


def test_parse_answer_keeps_the_synthetic_benchmarks_replies() -> None:
    """The shipped tiny models answer a single vocabulary word; the words that parsed to yes or no
    before still do, and the others stay unknown (the main job's figures are unchanged)."""
    assert metrics.parse_answers(["yes", "no", "yes .", "no ."]) == ["yes", "no", "yes", "no"]
    assert metrics.parse_answers(["there", "is", "the", "tone", "siren", "3"]) == ["unknown"] * 6


def test_unknown_replies_are_counted() -> None:
    replies = [reply for reply, _ in LMMS_EVAL_READINGS]
    expected = sum(parsed == "unknown" for _, parsed in LMMS_EVAL_READINGS)
    assert metrics.count_unknown(metrics.parse_answers(replies)) == expected == 11


@pytest.mark.parametrize(
    ("reply", "reference", "expected"),
    [
        ("Yes", "yes", True),
        ("Yes.", "yes", True),
        (" no!\n", "no", True),
        ("NO", "no", True),
        ("\"Yes\"", "yes", True),
        ("Yes, there is a dog barking.", "yes", False),
        ("Nope.", "no", False),
        ("y", "yes", False),
        ("yes yes", "yes", False),
        ("Yes .", "yes", False),  # the space before "." stays: lmms-eval strips before removing punctuation
        ("", "no", False),
    ],
)
def test_exact_match_is_lmms_evals(reply: str, reference: str, expected: bool) -> None:
    assert metrics.exact_match(reply, reference) is expected


def test_exact_match_accuracy() -> None:
    assert metrics.exact_match_accuracy(["Yes.", "No, it is not.", "no"], ["yes", "no", "yes"]) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="differ in length"):
        metrics.exact_match_accuracy(["yes"], ["yes", "no"])
    with pytest.raises(TypeError, match="reply"):
        metrics.exact_match(None, "yes")  # type: ignore[arg-type]


def test_parse_answer_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="reply"):
        metrics.parse_answer(None)  # type: ignore[arg-type]


def test_unknown_is_counted_and_never_agrees() -> None:
    predictions = metrics.parse_answers(["yes", "hmm", "maybe not", "no"])
    assert predictions == ["yes", "unknown", "unknown", "no"]
    assert metrics.count_unknown(predictions) == 2
    assert not metrics.answers_agree("unknown", "unknown")
    assert metrics.answers_agree("no", "no")


def test_scores_by_hand() -> None:
    predictions = ["yes", "yes", "no", "unknown", "no", "yes"]
    references = ["yes", "no", "no", "yes", "yes", "yes"]
    scores = metrics.binary_scores(predictions, references)
    # TP = 2 (rows 0, 5), FP = 1 (row 1), FN = 2 (rows 3, 4), TN = 1 (row 2).
    assert scores.accuracy == pytest.approx(3 / 6)
    assert scores.precision == pytest.approx(2 / 3)
    assert scores.recall == pytest.approx(2 / 4)
    assert scores.f1 == pytest.approx(2 * (2 / 3) * (1 / 2) / (2 / 3 + 1 / 2))
    assert scores.unknown == 1
    assert scores.num_samples == 6


def test_no_predicted_positive_gives_zero_precision_and_f1() -> None:
    precision, recall, f1 = metrics.precision_recall_f1(["no", "no"], ["yes", "no"])
    assert (precision, recall, f1) == (0.0, 0.0, 0.0)


def test_answer_consistency_counts_unknown_as_inconsistent() -> None:
    original = ["yes", "no", "unknown", "yes"]
    compressed = ["yes", "yes", "unknown", "yes"]
    assert metrics.answer_consistency(original, compressed) == pytest.approx(2 / 4)


def test_consistency_paradox_high_consistency_low_accuracy() -> None:
    """The same wrong answers before and after compression: A.C. is 1, accuracy stays low."""
    references = ["yes", "yes", "yes", "no", "no"]
    original = ["no", "no", "no", "yes", "no"]
    compressed = ["no", "no", "no", "yes", "no"]
    assert metrics.answer_consistency(original, compressed) == 1.0
    assert metrics.accuracy(original, references) == pytest.approx(1 / 5)
    assert metrics.accuracy(compressed, references) == pytest.approx(1 / 5)


@pytest.mark.parametrize(
    ("predictions", "references", "message"),
    [
        (["yes"], ["yes", "no"], "length"),
        ([], [], "empty"),
        (["maybe"], ["yes"], "predictions"),
        (["yes"], ["unknown"], "references"),
    ],
)
def test_bad_answer_lists_are_named(predictions: list[str], references: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        metrics.accuracy(predictions, references)


def test_seed_summary_uses_sample_std() -> None:
    summary = metrics.summarize_seeds([0.70, 0.74, 0.78])
    assert summary.mean == pytest.approx(0.74)
    assert summary.std == pytest.approx(0.04)
    assert summary.num_seeds == 3


def test_single_seed_std_is_nan() -> None:
    summary = metrics.summarize_seeds([0.5])
    assert summary.mean == 0.5 and math.isnan(summary.std)


def test_delta_accuracy_pairs_seeds() -> None:
    delta = metrics.delta_accuracy([0.72, 0.75, 0.71], [0.74, 0.76, 0.74])
    assert delta.mean == pytest.approx(-0.02)
    assert delta.std == pytest.approx(np.std([-0.02, -0.01, -0.03], ddof=1))
    with pytest.raises(ValueError, match="seed counts"):
        metrics.delta_accuracy([0.7], [0.7, 0.8])


TINY = flops.DecoderShape(
    hidden_size=4, intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=2, vocab_size=10
)


def test_prefill_flops_by_hand() -> None:
    # Per token: q 4*4 + k 4*2 + v 4*2 + o 4*4 = 48 MACs, MLP 3*4*8 = 96 MACs: 144 * 3 tokens = 432.
    # Attention, causal: 2 heads * head_dim 2 * (1 + 2 + 3) pairs * 2 products = 48. LM head 4 * 10 a row.
    assert flops.decoder_prefill_flops(TINY, 3) == 2 * (432 + 48 + 40)
    assert flops.decoder_prefill_flops(TINY, 3, lm_head_rows="all") == 2 * (432 + 48 + 120)
    assert flops.decoder_prefill_flops(TINY, 3, causal=False) == 2 * (432 + 2 * 2 * 2 * 9 + 40)


def test_prefill_flops_of_qwen2_7b_match_its_parameter_count() -> None:
    """For one token, the matmul FLOPs are 2 x (the published 6.5 B non-embedding parameters,
    biases and norms aside) plus the LM head."""
    shape = flops.DecoderShape(
        hidden_size=3584,
        intermediate_size=18944,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        head_dim=128,
        vocab_size=152064,
    )
    count = flops.decoder_prefill_flops(shape, 1)
    non_embedding = count / 2 - 3584 * 152064
    assert 6.45e9 < non_embedding < 6.6e9


def test_decoder_shape_names_bad_fields() -> None:
    with pytest.raises(ValueError, match="num_kv_heads"):
        flops.DecoderShape(
            hidden_size=4, intermediate_size=8, num_layers=1, num_heads=3, num_kv_heads=2, head_dim=2, vocab_size=10
        )
    with pytest.raises(ValueError, match="hidden_size"):
        flops.DecoderShape(
            hidden_size=0, intermediate_size=8, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=2, vocab_size=10
        )
    with pytest.raises(ValueError, match="lm_head_rows"):
        flops.decoder_prefill_flops(TINY, 3, lm_head_rows="first")  # type: ignore[arg-type]


@pytest.mark.parametrize(("seconds", "tokens"), [(1.0, 25), (10.0, 250), (30.0, 750), (0.04, 1)])
def test_qwen2_audio_token_count(seconds: float, tokens: int) -> None:
    assert metrics.qwen2_audio_token_count(int(round(seconds * metrics.SAMPLE_RATE))) == tokens


def test_qwen2_audio_token_count_refuses_over_30_s() -> None:
    with pytest.raises(ValueError, match="30 s"):
        metrics.qwen2_audio_token_count(30 * metrics.SAMPLE_RATE + 1)


def test_codec_grid() -> None:
    assert metrics.codec_token_count(13) == 26
    np.testing.assert_array_equal(metrics.frame_bounds(3000, 25), [[0, 1280], [1280, 2560], [2560, 3000]])
    assert metrics.frame_bounds(16_000, 100).shape == (50, 2)
    with pytest.raises(ValueError, match="token_rate"):
        metrics.frame_bounds(16_000, 40)
    with pytest.raises(ValueError, match="num_samples"):
        metrics.frame_bounds(0, 25)


def test_token_counts_before_and_after() -> None:
    mask = np.zeros(25, dtype=bool)  # 2 s at r = 25: 25 frames of 80 ms
    mask[:12] = True  # 0.96 s kept
    counts = metrics.token_counts(32_000, mask, 25)
    assert counts == metrics.TokenCounts(
        audio_tokens_before=50, audio_tokens_after=24, codec_tokens_before=50, codec_tokens_after=24
    )


def test_evidence_frames_by_half_overlap() -> None:
    # r = 25: 80 ms frames. Evidence 0.10-0.30 s covers frame 1 by 60 ms, frame 2 fully, frame 3 by 60 ms;
    # 0.50-0.53 s covers 30 ms of frame 6 only, less than half, so that frame is added as its best frame.
    marked = metrics.evidence_frames([(0.10, 0.30), (0.50, 0.53)], 16_000, 25)
    assert np.flatnonzero(marked).tolist() == [1, 2, 3, 6]


def test_evidence_frames_count_the_union_of_intervals() -> None:
    # r = 25. 0.10-0.19 s marks frame 1 (60 of 80 ms) and covers 30 ms of frame 2; 0.21-0.32 s marks
    # frame 3 and covers 30 ms of frame 2. Together they cover 60 ms of frame 2, so it is marked too.
    marked = metrics.evidence_frames([(0.10, 0.19), (0.21, 0.32)], 16_000, 25)
    assert np.flatnonzero(marked).tolist() == [1, 2, 3]


def test_evidence_frames_measure_the_clipped_last_frame_by_its_own_length() -> None:
    # 3000 samples at r = 25: the last frame is samples 2560-3000 (440). Evidence 0.10-0.1875 s marks
    # frame 1 and covers the whole last frame, which counts although it is under half of 1280 samples.
    marked = metrics.evidence_frames([(0.10, 0.1875)], 3000, 25)
    assert np.flatnonzero(marked).tolist() == [1, 2]


def test_evidence_recall_on_hand_made_masks() -> None:
    intervals = [(0.10, 0.30)]  # evidence frames 1, 2, 3 at r = 25 in a 1 s clip (13 frames)
    keep_all = np.ones(13, dtype=bool)
    assert metrics.evidence_recall(keep_all, intervals, 16_000, 25) == 1.0
    keep_two = metrics.keep_mask_from_indices([0, 1, 3, 8], 13)
    assert metrics.evidence_recall(keep_two, intervals, 16_000, 25) == pytest.approx(2 / 3)
    keep_none_of_it = metrics.keep_mask_from_indices([0, 4, 5, 6], 13)
    assert metrics.evidence_recall(keep_none_of_it, intervals, 16_000, 25) == 0.0


def test_evidence_recall_at_other_rates() -> None:
    # r = 100: 20 ms frames; evidence 0.10-0.30 s is frames 5..14; keeping the even frames keeps 5 of 10.
    keep_even = np.arange(50) % 2 == 0
    assert metrics.evidence_recall(keep_even, [(0.10, 0.30)], 16_000, 100) == pytest.approx(0.5)


def test_evidence_recall_without_evidence_is_nan_and_left_out_of_the_summary() -> None:
    assert math.isnan(metrics.evidence_recall(np.ones(13, dtype=bool), [], 16_000, 25))
    summary = metrics.summarize_evidence_recall([1.0, math.nan, 0.5])
    assert summary == metrics.EvidenceRecallSummary(mean=0.75, num_scored=2, num_without_evidence=1)


def test_evidence_recall_checks_its_inputs() -> None:
    with pytest.raises(ValueError, match="13 at rate 25"):
        metrics.evidence_recall(np.ones(12, dtype=bool), [(0.1, 0.2)], 16_000, 25)
    with pytest.raises(ValueError, match="bool"):
        metrics.evidence_recall(np.ones(13), [(0.1, 0.2)], 16_000, 25)
    with pytest.raises(ValueError, match="after the clip"):
        metrics.evidence_recall(np.ones(13, dtype=bool), [(1.5, 2.0)], 16_000, 25)
    with pytest.raises(ValueError, match="start < end"):
        metrics.evidence_recall(np.ones(13, dtype=bool), [(0.3, 0.2)], 16_000, 25)
    with pytest.raises(ValueError, match=r"\[0, 13\)"):
        metrics.keep_mask_from_indices([13], 13)
