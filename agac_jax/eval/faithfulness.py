"""Deletion and insertion curves: how much of the answer a selector's frames carry, with no ground truth.

A selector ranks a clip's codec frames (rate r, the frames `methods.select_batch` keeps). At ratio rho,

- insertion(rho): the top-rho frames as they are and every other sample silent (zeros);
- deletion(rho): the top-rho frames silent and the rest as they are.

Both keep the clip's length, so a curve's clips share its bucket and the model hears silence where a
frame is gone, as at the AAD's m = 0 end; insertion(0) and deletion(1) are the silent clip, insertion(1)
and deletion(0) the clip itself. At each point two measures of the original answer y (the greedy
answer on the clip, generated once):

- its log-odds, log p(y) - log(1 - p(y)) summed over y's tokens (`Scorer.answer_targets`), which keeps
  resolving where p(y) is close to 1;
- answer consistency: whether the greedy answer on the altered clip is still y.

A faithful ranking keeps the answer with few frames (insertion rises early) and loses it when they go
(deletion falls early). `joined_consistency` asks instead what the pipeline hears before its codec: the
top-rho frames joined in time order (`codec.frames.join_frames`, crossfaded cuts), the rest dropped.
Areas are trapezoid means over rho in [0, 1]; `gap` = insertion - deletion
(higher is better). The log-odds areas are of the curve normalised per clip to its ends,
(f(rho) - f(silent)) / (f(clip) - f(silent)), so clips of different confidence weigh alike; a clip whose
ends are within 1e-6 of each other is left out of them (its answer does not depend on the audio).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from agac_jax.eval import metrics
from agac_jax.scoring import methods, selection
from agac_jax.scoring.settings import DEFAULT_RHOS
FLAT_ENDS = 1e-6  # log-odds ends closer than this leave a clip out of the normalised areas


@dataclasses.dataclass(frozen=True)
class Curves:
    """One selector's curves over N clips at the ratios `rhos` [R].

    log_odds_insertion, log_odds_deletion: float64 [N, R]; consistent_insertion, consistent_deletion:
    bool [N, R] (the altered clip's answer is the original's), or float64 [N, R], the share of
    several random draws in which it is (`mean_curves`).
    """

    selector: str
    rhos: tuple[float, ...]
    log_odds_insertion: np.ndarray
    log_odds_deletion: np.ndarray
    consistent_insertion: np.ndarray
    consistent_deletion: np.ndarray

    def normalised(self, curve: np.ndarray) -> np.ndarray:
        """[M, R] curve rows of the clips whose log-odds ends differ, scaled to 0 (silent) .. 1 (clip)."""
        silent, full = self.log_odds_insertion[:, 0], self.log_odds_insertion[:, -1]
        span = full - silent
        keep = np.abs(span) > FLAT_ENDS
        return (curve[keep] - silent[keep, None]) / span[keep, None]

    def audio_dependent(self) -> np.ndarray:
        """bool [N]: the clips whose answer the silent clip changes (insertion at rho 0 inconsistent).
        Only on these can an A.C. tell selections apart: on the others keeping no frame at all keeps
        the answer (a yes/no model whose silence answer is "no" keeps every "no" answer). Needs no
        ground truth, so it applies to any data set."""
        if self.rhos[0] != 0.0:
            raise ValueError(f"the curves start at rho {self.rhos[0]}, not at the silent clip (0)")
        return np.asarray(self.consistent_insertion[:, 0]) < 1  # bool, or a share of draws (equal at rho 0)

    def areas(self) -> dict[str, float]:
        """Trapezoid areas over rho of the mean curves: log-odds (normalised) and A.C., insertion,
        deletion and their gap."""
        rhos = np.asarray(self.rhos)
        area = lambda rows: float(np.trapezoid(np.mean(rows, axis=0), rhos) / (rhos[-1] - rhos[0])) if len(rows) else float("nan")  # noqa: E731
        out = {
            "log_odds_insertion": area(self.normalised(self.log_odds_insertion)),
            "log_odds_deletion": area(self.normalised(self.log_odds_deletion)),
            "ac_insertion": area(self.consistent_insertion.astype(np.float64)),
            "ac_deletion": area(self.consistent_deletion.astype(np.float64)),
        }
        out["log_odds_gap"] = out["log_odds_insertion"] - out["log_odds_deletion"]
        out["ac_gap"] = out["ac_insertion"] - out["ac_deletion"]
        return out


def mean_curves(draws: Sequence[Curves]) -> Curves:
    """The mean of one selector's curves over random draws (the same clips and ratios): log-odds
    averaged, consistency as the share of draws whose answer is unchanged. A.C. and areas of the mean
    are the means of the draws'."""
    first = draws[0]
    if any(d.rhos != first.rhos or d.selector != first.selector for d in draws):
        raise ValueError("mean_curves needs draws of one selector at the same ratios")
    mean = lambda name: np.mean([np.asarray(getattr(d, name), np.float64) for d in draws], axis=0)  # noqa: E731
    return Curves(first.selector, first.rhos, mean("log_odds_insertion"), mean("log_odds_deletion"),
                  mean("consistent_insertion"), mean("consistent_deletion"))


def frame_sample_mask(kept: np.ndarray, num_samples: int, rate: int) -> np.ndarray:
    """bool [num_samples]: the samples of the kept codec frames (indices at rate `rate`)."""
    bounds = metrics.frame_bounds(num_samples, rate)
    mask = np.zeros(num_samples, bool)
    for start, end in bounds[np.asarray(kept, np.int64)]:
        mask[start:end] = True
    return mask


def altered_clips(waveform: np.ndarray, kept: np.ndarray, rate: int) -> tuple[np.ndarray, np.ndarray]:
    """(insertion clip, deletion clip): the kept frames' samples alone, and every sample but theirs."""
    mask = frame_sample_mask(kept, len(waveform), rate)
    return np.where(mask, waveform, 0.0).astype(np.float32), np.where(mask, 0.0, waveform).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class CurveEnds:
    """The ends every selector's curves share, per clip [N]: the log-odds and the answer consistency of
    the silent clip (insertion at 0, deletion at 1) and of the clip itself (insertion at 1, deletion at 0)."""

    log_odds_silent: np.ndarray
    log_odds_full: np.ndarray
    consistent_silent: np.ndarray
    consistent_full: np.ndarray


def _agreement(scorer: Any, clips: Sequence[np.ndarray], owner: Sequence[int], scores: Sequence[Any],
               questions: Sequence[str]) -> np.ndarray:
    """bool per altered clip: whether the greedy answer on it is still its owner's original answer."""
    replies = scorer.answer(clips, [questions[i] for i in owner])
    original = [metrics.parse_answer(s.answer_text) for s in scores]
    return np.asarray([metrics.answers_agree(metrics.parse_answer(reply), original[i])
                       for reply, i in zip(replies, owner)], bool)


def _targets_and_agreement(scorer: Any, clips: Sequence[np.ndarray], owner: Sequence[int], scores: Sequence[Any],
                           questions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per altered clip: the original answer's log-odds, and whether the greedy answer is still it."""
    asked = [questions[i] for i in owner]
    log_odds = scorer.answer_targets(clips, asked, [scores[i].answer_ids for i in owner])["log_odds"]
    return np.asarray(log_odds), _agreement(scorer, clips, owner, scores, questions)


def curve_ends(scorer: Any, scores: Sequence[Any], waveforms: Sequence[np.ndarray],
               questions: Sequence[str]) -> CurveEnds:
    """The shared ends of every selector's curves over these clips (compute once, pass to each)."""
    clips: list[np.ndarray] = []
    for wave in waveforms:
        clips += [np.zeros(len(wave), np.float32), np.asarray(wave, np.float32)]
    owner = [i for i in range(len(waveforms)) for _ in range(2)]
    log_odds, same = _targets_and_agreement(scorer, clips, owner, scores, questions)
    return CurveEnds(log_odds[0::2], log_odds[1::2], same[0::2], same[1::2])


def selector_curves(scorer: Any, selector: str, scores: Sequence[Any], waveforms: Sequence[np.ndarray],
                    questions: Sequence[str], *, rate: int, rhos: Sequence[float] = DEFAULT_RHOS,
                    seeds: Sequence[int] | None = None, ends: CurveEnds | None = None,
                    weights: Sequence[float] | None = None) -> Curves:
    """The deletion and insertion curves of `selector` (a name of `methods.METHODS`) over clips.

    Args:
      scorer: a `Scorer` (answers, answer_targets).
      scores: per clip, its `ClipScores` (the original answer: answer_ids, answer_text; the selector's inputs).
      waveforms, questions: per clip.
      rate: the codec frame grid the selector ranks.
      rhos: increasing ratios from 0 to 1.
      seeds: per clip, the `random` selector's seed (default 0).
      ends: `curve_ends` of these clips, scores and questions (computed here when None).
      weights: per clip, its share weight under `adaptive_kind` (`methods.select_batch`).
    """
    rhos = tuple(float(r) for r in rhos)
    if rhos[0] != 0.0 or rhos[-1] != 1.0 or any(b <= a for a, b in zip(rhos, rhos[1:])):
        raise ValueError(f"rhos must increase from 0 to 1, got {rhos}")
    n = len(scores)
    seeds = list(seeds) if seeds is not None else [0] * n
    ends = ends if ends is not None else curve_ends(scorer, scores, waveforms, questions)
    if len(ends.log_odds_full) != n:
        raise ValueError(f"ends are of {len(ends.log_odds_full)} clips, the scores of {n}")
    inner = rhos[1:-1]
    # per clip, (insertion, deletion) per inner rho
    clips: list[np.ndarray] = []
    batch = methods.SelectionBatch(scores, waveforms)  # on the device once for every ratio
    kept = {rho: [selection.kept_indices(m) for m in batch.masks(selector, rate, rho, seeds, weights)]
            for rho in inner}
    for i, wave in enumerate(waveforms):
        for rho in inner:
            clips.extend(altered_clips(np.asarray(wave, np.float32), kept[rho][i], rate))
    owner = [i for i in range(n) for _ in range(2 * len(inner))]
    log_odds, same = _targets_and_agreement(scorer, clips, owner, scores, questions) if clips else (
        np.zeros(0), np.zeros(0, bool))
    lo_mid = log_odds.reshape(n, len(inner), 2)
    same_mid = same.reshape(n, len(inner), 2)
    silent, full = ends.log_odds_silent[:, None], ends.log_odds_full[:, None]
    quiet, heard = ends.consistent_silent[:, None], ends.consistent_full[:, None]
    return Curves(
        selector=selector, rhos=rhos,
        log_odds_insertion=np.concatenate([silent, lo_mid[:, :, 0], full], axis=1),
        log_odds_deletion=np.concatenate([full, lo_mid[:, :, 1], silent], axis=1),
        consistent_insertion=np.concatenate([quiet, same_mid[:, :, 0], heard], axis=1),
        consistent_deletion=np.concatenate([heard, same_mid[:, :, 1], quiet], axis=1),
    )


def joined_consistency(scorer: Any, selector: str, scores: Sequence[Any], waveforms: Sequence[np.ndarray],
                       questions: Sequence[str], *, rate: int, rho: float, seeds: Sequence[int] | None = None,
                       crossfade_ms: float | None = None, weights: Sequence[float] | None = None) -> np.ndarray:
    """bool [N]: whether each clip's greedy answer is still the original when the clip is only the
    top-`rho` frames of `selector` joined in time order (what the codec would be handed), no codec;
    `weights`: per clip, its share weight under `adaptive_kind`."""
    from agac_jax.codec.frames import DEFAULT_CROSSFADE_MS, join_frames

    fade = DEFAULT_CROSSFADE_MS if crossfade_ms is None else crossfade_ms
    seeds = list(seeds) if seeds is not None else [0] * len(scores)
    kept = methods.select_batch(scores, waveforms, selector, rate, rho, seeds, weights)
    clips = [join_frames(np.asarray(wave, np.float32), keep, rate, fade) for wave, keep in zip(waveforms, kept)]
    return _agreement(scorer, clips, range(len(clips)), scores, questions)
