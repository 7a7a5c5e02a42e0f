"""Score audio files from the command line: one JSON record per clip, and an optional figure.

`run(request)` is the whole of `python -m launch.score`: it checks the request, reads the clips (a
clip that cannot be used becomes an error record `{"file", "error"}` and the others go on), scores
the readable ones in one `Scorer.score` call, selects the kept frames with `methods.select_batch`, writes
the records (a JSON list to `request.output`, or JSON lines to stdout) and the figure, and returns
the exit code: 0, or `EXIT_CLIP_FAILED` when any clip failed. A bad request raises `RequestError`
(the command line turns it into exit code `EXIT_BAD_REQUEST`).

Record of a scored clip:
    file, question, samples, input_ids, answer_ids, answer_text, audio_tokens (T),
    local, global, fused (T floats each), logp_full, logp_silence (the local score's target: log p
    or log-odds), local_score {estimator, window or ig_steps, target, gate_domain, local_sign,
    local_smooth} (the settings the local score was computed and read with), alpha (the fusion weight
    of the local score in `fused`),
    frames {rate, method, rho, scores (fused frame scores, N floats), keep (sorted kept frame indices)},
    seconds {compile, run}.

The figure (`plot_clips`) is one PNG with two stacked panels per scored clip, one clip below the
other: the log-mel spectrogram (dropped frames dimmed), and under it, on the same time axis, the
fused score per 40 ms audio token with the min-max normalised local and global scores in lighter
colours and the kept frames shaded. Failed clips have no panels.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, Sequence, TextIO

import numpy as np

from agac_jax.audio import features as feats
from agac_jax.audio.grids import SAMPLE_RATE, SAMPLES_PER_AUDIO_TOKEN
from agac_jax.audio.io import load_audio
from agac_jax.models.qwen2_audio.checkpoints import CheckpointError
from agac_jax.scoring import selection
from agac_jax.scoring.methods import NAMES as METHODS
from agac_jax.scoring.settings import ESTIMATORS
from agac_jax.scoring.methods import select_batch
from agac_jax.scoring.scorer import POSTER_ALPHA, POSTER_LOCAL_SCORE, ClipScores, Scorer, ScoringConfig
from agac_jax.models.qwen2_audio.tokenizer import AUDIO_BOS, AUDIO_EOS, AUDIO_TOKEN

EXIT_CLIP_FAILED = 1
EXIT_BAD_REQUEST = 2
MAX_BATCH = 8
LOCAL_SCORES = ("default", "poster")  # ScoringConfig's local score, or POSTER_LOCAL_SCORE
SELECTION_SEED = 0
CLIP_ERRORS = (OSError, ValueError, TypeError, RuntimeError)

IdLists = tuple[tuple[int, ...], ...]


class RequestError(ValueError):
    """The request itself is wrong (a flag value, the checkpoint); no clip was scored."""


@dataclasses.dataclass(frozen=True)
class ScoreRequest:
    """What `python -m launch.score` was asked; the fields are its flags."""

    checkpoint: str
    audio: tuple[str, ...]
    question: str
    rate: int = 50
    keep: str = "0.7"
    estimator: str | None = None  # None: the local score's own (integrated_gradients; poster: occlusion)
    local_score: str = "default"  # default (ScoringConfig's) | poster (POSTER_LOCAL_SCORE, DESIGN.md)
    alpha: float | None = None  # None: ScoringConfig's (0.75), POSTER_ALPHA (0.5) with local_score poster
    method: str = "fused"
    input_ids: IdLists | None = None  # one prompt per clip, or None
    answer_ids: IdLists | None = None  # one answer per clip, or None: greedy
    max_new_tokens: int = 8
    output: str | None = None
    plot: str | None = None
    param_dtype: str = "float32"  # float32 | bfloat16: the weights' dtype
    dtype: str = "float32"  # float32 | bfloat16: the compute dtype
    prompt_format: str = "chat"  # chat (the processor's template) | raw (the base model's form)


@dataclasses.dataclass
class ClipOutcome:
    """One input file: its waveform and scores, or why it failed."""

    file: str
    waveform: np.ndarray | None = None
    scores: ClipScores | None = None
    keep: np.ndarray | None = None
    error: str | None = None


# ----------------------------------------------------------------------------------------------
# The request
# ----------------------------------------------------------------------------------------------


def parse_id_lists(text: str | None, flag: str, n_clips: int) -> IdLists | None:
    """A JSON list of ints (the same for every clip) or a list of such lists (one per clip).

    Raises:
        RequestError: not JSON, not that shape, or a list of lists whose length is not n_clips.
    """
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise RequestError(f"--{flag} is not valid JSON ({error}): {text!r}") from error
    if _is_int_list(value):
        return (tuple(value),) * n_clips
    if isinstance(value, list) and value and all(_is_int_list(item) for item in value):
        if len(value) != n_clips:
            raise RequestError(f"--{flag} holds {len(value)} lists but {n_clips} --audio files were given; "
                               f"give one list per file, or one flat list for all")
        return tuple(tuple(item) for item in value)
    raise RequestError(f"--{flag} must be a non-empty JSON list of integers, or a list of such lists (one per "
                       f"--audio file); got {text!r}")


def _is_int_list(value: Any) -> bool:
    return (isinstance(value, list) and len(value) > 0
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value))


def check_request(request: ScoreRequest) -> None:
    """Checks everything that does not need the model; raises RequestError naming the bad input."""
    if not request.audio:
        raise RequestError("no --audio file given")
    if not request.question or not request.question.strip():
        raise RequestError("--question is empty")
    for token in (AUDIO_TOKEN, AUDIO_BOS, AUDIO_EOS):
        if token in request.question:
            raise RequestError(f"--question must not contain {token}: the prompt places the audio itself")
    if not Path(request.checkpoint).is_dir():
        raise RequestError(f"--checkpoint {request.checkpoint!r} is not a directory")
    try:
        selection.frame_samples(request.rate)
        selection.keep_ratio_fraction(request.keep)
    except (TypeError, ValueError) as error:
        raise RequestError(f"--rate={request.rate} --keep={request.keep}: {error}") from error
    if request.alpha is not None and not (math.isfinite(request.alpha) and 0.0 <= request.alpha <= 1.0):
        raise RequestError(f"--alpha must lie in [0, 1]; got {request.alpha}")
    if request.estimator is not None and request.estimator not in ESTIMATORS:
        raise RequestError(f"--estimator={request.estimator!r}; expected one of {ESTIMATORS}")
    if request.local_score not in LOCAL_SCORES:
        raise RequestError(f"--local_score={request.local_score!r}; expected one of {LOCAL_SCORES}")
    if request.local_score == "poster" and request.estimator not in (None, POSTER_LOCAL_SCORE["estimator"]):
        raise RequestError(f"--local_score=poster is occlusion of one token; it cannot take --estimator={request.estimator}")
    if request.method not in METHODS:
        raise RequestError(f"--method={request.method!r}; expected one of {METHODS}")
    if request.max_new_tokens < 1:
        raise RequestError(f"--max_new_tokens must be at least 1; got {request.max_new_tokens}")
    for flag in ("input_ids", "answer_ids"):
        lists = getattr(request, flag)
        if lists is not None and len(lists) != len(request.audio):
            raise RequestError(f"{flag} holds {len(lists)} lists for {len(request.audio)} --audio files")
    for path in (request.output, request.plot):
        if path is not None and not Path(path).resolve().parent.is_dir():
            raise RequestError(f"the directory of {path!r} does not exist")


def check_answer_ids(answers: IdLists, scorer: Scorer, files: Sequence[str]) -> None:
    """Given answers must be 1..max_new_tokens ids of the vocabulary, never the audio placeholder."""
    vocab = scorer.model_config.text.vocab_size
    audio_id = scorer.model.audio_token_id
    limit = scorer.config.max_new_tokens
    for file, answer in zip(files, answers):
        if len(answer) > limit:
            raise RequestError(f"--answer_ids for {file}: {len(answer)} tokens, more than --max_new_tokens={limit}")
        bad = [t for t in answer if not 0 <= t < vocab or t == audio_id]
        if bad:
            raise RequestError(f"--answer_ids for {file}: ids {bad} are outside the vocabulary [0, {vocab}) or the "
                               f"audio placeholder {audio_id}")


def scoring_config(request: ScoreRequest, n_clips: int) -> ScoringConfig:
    """The Scorer's configuration: one rate, the request's rho, local score, estimator and alpha, batch
    min(8, clips)."""
    poster = request.local_score == "poster"
    local = dict(POSTER_LOCAL_SCORE) if poster else {}
    if request.estimator is not None:
        local["estimator"] = request.estimator
    alpha = request.alpha if request.alpha is not None else POSTER_ALPHA if poster else ScoringConfig.alpha
    return ScoringConfig(rates=(request.rate,), keep=request.keep, **local,
                         alpha=float(alpha), max_new_tokens=request.max_new_tokens,
                         batch_size=max(1, min(MAX_BATCH, n_clips)))


@functools.lru_cache(maxsize=4)
def load_scorer(checkpoint: str, config: ScoringConfig, param_dtype: str = "float32", dtype: str = "float32",
                prompt_format: str = "chat") -> Scorer:
    """A Scorer for the checkpoint directory, kept for later requests with the same configuration."""
    try:
        return Scorer.from_directory(checkpoint, config, param_dtype=param_dtype, dtype=dtype,
                                     prompt_format=prompt_format)
    except CheckpointError:
        raise  # names the unusable file itself: one `error:` line (agac_jax/cli/errors.py)
    except (OSError, ValueError) as error:
        raise RequestError(f"--checkpoint {checkpoint!r} cannot be loaded: {error}") from error


# ----------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------


def read_clips(files: Sequence[str]) -> list[ClipOutcome]:
    """Loads each file (float32 mono 16 kHz, at most 30 s); a file that fails gets its error."""
    outcomes = []
    for file in files:
        try:
            outcomes.append(ClipOutcome(file, waveform=load_audio(file)))
        except CLIP_ERRORS as error:
            outcomes.append(ClipOutcome(file, error=_error_text(file, error)))
    return outcomes


def _error_text(file: str, error: BaseException) -> str:
    message = str(error) or type(error).__name__
    return message if file in message else f"{file}: {message}"


def expected_prompt(scorer: Scorer, question: str, waveform: np.ndarray) -> np.ndarray:
    """The prompt ids the scorer builds for one clip: its template, audio placeholders expanded."""
    inputs = scorer.adapter.inputs([waveform], [question], scorer.bucket_frames(len(waveform)),
                                   padding_side="right", silence=False)
    return np.asarray(inputs.input_ids[0])


def prompt_mismatch(given: Sequence[int], expected: np.ndarray) -> str | None:
    """None when equal, else where the given ids first differ from the expected prompt."""
    given_arr = np.asarray(given, np.int64)
    if given_arr.shape == expected.shape and np.array_equal(given_arr, expected):
        return None
    n = min(len(given_arr), len(expected))
    differ = np.flatnonzero(given_arr[:n] != expected[:n])
    where = (f"first difference at position {differ[0]}: given {given_arr[differ[0]]}, expected "
             f"{expected[differ[0]]}" if differ.size else f"the first {n} ids agree")
    return (f"--input_ids ({len(given_arr)} ids) differ from the prompt the scorer builds from --question and "
            f"this clip ({len(expected)} ids); {where}")


def check_prompts(outcomes: list[ClipOutcome], scorer: Scorer, request: ScoreRequest) -> None:
    """Marks each readable clip whose given --input_ids differ from its prompt as failed."""
    if request.input_ids is None:
        return
    for outcome, given in zip(outcomes, request.input_ids):
        if outcome.error is None:
            problem = prompt_mismatch(given, expected_prompt(scorer, request.question, outcome.waveform))
            if problem is not None:
                outcome.error = f"{outcome.file}: {problem}"


def score_outcomes(outcomes: list[ClipOutcome], scorer: Scorer, request: ScoreRequest) -> None:
    """Scores the clips without an error in one call; if that call fails, clip by clip."""
    todo = [i for i, o in enumerate(outcomes) if o.error is None]
    if not todo:
        return
    try:
        _score_indices(outcomes, todo, scorer, request)
    except CLIP_ERRORS:
        for i in todo:
            try:
                _score_indices(outcomes, [i], scorer, request)
            except CLIP_ERRORS as error:
                outcomes[i].error = _error_text(outcomes[i].file, error)


def _score_indices(outcomes: list[ClipOutcome], indices: list[int], scorer: Scorer, request: ScoreRequest) -> None:
    clips = [outcomes[i].waveform for i in indices]
    answers = None if request.answer_ids is None else [list(request.answer_ids[i]) for i in indices]
    results = scorer.score(clips, [request.question] * len(clips), answer_ids=answers)
    keeps = select_batch(results, clips, request.method, request.rate, request.keep,
                         [SELECTION_SEED] * len(clips))
    for i, scores, keep in zip(indices, results, keeps):
        problem = scores.non_finite()
        if problem is None:
            outcomes[i].scores, outcomes[i].keep = scores, keep
        else:
            outcomes[i].error = f"{outcomes[i].file}: {problem}"


def local_score_fields(config: ScoringConfig) -> dict[str, Any]:
    """The settings of `config`'s local score, as a record names them."""
    steps = {"window": config.window} if config.estimator == "occlusion" else {"ig_steps": config.ig_steps}
    return dict(estimator=config.estimator, **steps, target=config.target, gate_domain=config.gate_domain,
                local_sign=config.local_sign, local_smooth=config.local_smooth)


def clip_record(outcome: ClipOutcome, request: ScoreRequest, config: ScoringConfig) -> dict[str, Any]:
    """The JSON record of one clip (see the module docstring), scored with `config`."""
    if outcome.error is not None:
        return {"file": outcome.file, "error": outcome.error}
    s = outcome.scores
    return {
        "file": outcome.file,
        "question": s.question,
        "samples": int(s.n_samples),
        "input_ids": _ints(s.input_ids),
        "answer_ids": _ints(s.answer_ids),
        "answer_text": s.answer_text,
        "audio_tokens": int(s.num_tokens),
        "local": _floats(s.local),
        "global": _floats(s.global_),
        "fused": _floats(s.fused),
        "logp_full": float(s.logp_full),
        "logp_silence": float(s.logp_silence),
        "local_score": local_score_fields(config),
        "alpha": float(config.alpha),
        "frames": {
            "rate": request.rate,
            "method": request.method,
            "rho": request.keep,
            "scores": _floats(s.frames[request.rate]),
            "keep": _ints(outcome.keep),
        },
        "seconds": {"compile": float(s.seconds["compile"]), "run": float(s.seconds["run"])},
    }


def _ints(x: np.ndarray) -> list[int]:
    return [int(v) for v in np.asarray(x).reshape(-1)]


def _floats(x: np.ndarray) -> list[float]:
    return [float(v) for v in np.asarray(x, np.float64).reshape(-1)]


def score_request(request: ScoreRequest) -> tuple[list[ClipOutcome], Scorer | None]:
    """Reads, checks and scores every clip of the request; the scorer is None when no clip was readable."""
    check_request(request)
    outcomes = read_clips(request.audio)
    readable = sum(o.error is None for o in outcomes)
    if not readable:
        return outcomes, None
    scorer = load_scorer(str(Path(request.checkpoint).resolve()), scoring_config(request, readable),
                         request.param_dtype, request.dtype, request.prompt_format)
    if request.answer_ids is not None:
        check_answer_ids(request.answer_ids, scorer, request.audio)
    check_prompts(outcomes, scorer, request)
    score_outcomes(outcomes, scorer, request)
    return outcomes, scorer


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------


def write_records(records: list[dict[str, Any]], output: str | None, stdout: TextIO) -> None:
    """A JSON list (one record per line) to `output`, written atomically; JSON lines to stdout if None.
    Strict JSON: a NaN or inf value is a ValueError (non-finite scores are clip errors before this)."""
    lines = [json.dumps(record, allow_nan=False) for record in records]
    if output is None:
        for line in lines:
            stdout.write(line + "\n")
        stdout.flush()
        return
    text = "[\n" + ",\n".join(lines) + "\n]\n" if lines else "[]\n"
    _write_atomic(Path(output), text.encode())


def _write_atomic(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data)
    os.replace(partial, path)


def _frame_spans(frames: np.ndarray, n_samples: int, rate: int) -> list[tuple[float, float]]:
    """Runs of consecutive frame indices as (start, end) seconds, the last frame clipped to the clip."""
    size = selection.frame_samples(rate)
    spans: list[tuple[float, float]] = []
    for f in np.asarray(frames, np.int64):
        start, end = f * size / SAMPLE_RATE, min((f + 1) * size, n_samples) / SAMPLE_RATE
        if spans and math.isclose(spans[-1][1], start):
            spans[-1] = (spans[-1][0], end)
        else:
            spans.append((start, end))
    return spans


def _normalised(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return np.asarray(selection.minmax_normalize(x, np.ones(x.shape, bool)))


def _plot_spectrogram(axis, waveform: np.ndarray, num_mel_bins: int, dropped: list[tuple[float, float]]) -> None:
    mel, frames = feats.log_mel(waveform, num_mel_bins)
    axis.imshow(mel, origin="lower", aspect="auto", cmap="magma", interpolation="nearest",
                extent=(0.0, frames / feats.FRAMES_PER_SECOND, 0, num_mel_bins))
    for start, end in dropped:
        axis.axvspan(start, end, color="black", alpha=0.45, linewidth=0)
    axis.set_ylabel("mel bin")


def _plot_token_scores(axis, scores: ClipScores, kept: list[tuple[float, float]], label: str) -> None:
    edges = np.arange(scores.num_tokens + 1) * SAMPLES_PER_AUDIO_TOKEN / SAMPLE_RATE
    for i, (start, end) in enumerate(kept):
        axis.axvspan(start, end, color="tab:green", alpha=0.18, linewidth=0, label=label if i == 0 else None)
    axis.stairs(_normalised(scores.local), edges, color="tab:blue", alpha=0.4, label="local (AAD), min-max")
    axis.stairs(_normalised(scores.global_), edges, color="tab:orange", alpha=0.4, label="global (attention), min-max")
    axis.stairs(scores.fused, edges, color="black", linewidth=1.5, label="fused")
    axis.set_ylim(-0.05, 1.05)
    axis.set_ylabel("score")
    axis.legend(loc="upper right", fontsize=6, ncol=4, framealpha=0.7)


def plot_clips(outcomes: Sequence[ClipOutcome], request: ScoreRequest, path: str, num_mel_bins: int) -> int:
    """Writes the figure (see the module docstring) for the scored clips; returns how many it shows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = [o for o in outcomes if o.error is None and o.scores is not None]
    if not scored:
        return 0
    fig = plt.figure(figsize=(10, 4.2 * len(scored)), layout="constrained")
    rows = fig.subfigures(len(scored), 1, squeeze=False)[:, 0]
    for subfig, outcome in zip(rows, scored):
        top, bottom = subfig.subplots(2, 1, sharex=True, height_ratios=[3, 2])
        scores, n = outcome.scores, outcome.scores.n_samples
        n_frames = selection.static_num_frames(n, request.rate)
        dropped = np.setdiff1d(np.arange(n_frames), outcome.keep)
        _plot_spectrogram(top, outcome.waveform, num_mel_bins, _frame_spans(dropped, n, request.rate))
        label = f"kept {len(outcome.keep)}/{n_frames} frames ({request.method}, r={request.rate}, rho={request.keep})"
        _plot_token_scores(bottom, scores, _frame_spans(outcome.keep, n, request.rate), label)
        top.set_title(f"{outcome.file}  |  answer: {scores.answer_text!r}", fontsize=9)
        bottom.set_xlim(0.0, n / SAMPLE_RATE)
        bottom.set_xlabel("time (s); one step per 40 ms audio token")
    fig.savefig(path, format="png", dpi=100)
    plt.close(fig)
    return len(scored)


def run(request: ScoreRequest, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    """Scores the request, writes records and figure; returns 0, or EXIT_CLIP_FAILED if a clip failed.

    stdout, stderr: where JSON lines and errors go; None: sys.stdout, sys.stderr at call time.

    Raises:
        RequestError: the request is wrong (nothing is written).
    """
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    outcomes, scorer = score_request(request)
    config = scorer.config if scorer is not None else scoring_config(request, max(1, len(outcomes)))
    records = [clip_record(outcome, request, config) for outcome in outcomes]
    write_records(records, request.output, stdout)
    failed = [o for o in outcomes if o.error is not None]
    for outcome in failed:
        stderr.write(f"error: {outcome.error}\n")
    if request.plot is not None:
        mels = getattr(getattr(scorer, "model_config", None), "audio", None)  # the model's log-mel bins, if any
        mels = 128 if mels is None else mels.num_mel_bins
        if not plot_clips(outcomes, request, request.plot, mels):
            stderr.write(f"no clip was scored; {request.plot} not written\n")
    if failed:
        stderr.write(f"{len(failed)} of {len(outcomes)} clips failed\n")
        return EXIT_CLIP_FAILED
    return 0
