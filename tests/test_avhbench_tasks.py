"""AVHBench's four tasks: the loader's free-text captioning samples, the caption records and tables,
the per-task configs, and two local PandaGPT sweeps (matching, captioning) end to end, checking that
only the soundtrack goes through the codec while the video reaches the model as it is.

The two sweeps share one random tiny PandaGPT scorer (both at the captioning variant's answer budget,
so its programs compile once), ask 2 of the 4 generated videos and run `original` and `codec` only:
the scoring program, which a selecting method needs, takes minutes to compile here, and a selection
changes only which frames of the same soundtrack the codec request keeps (the `fused` and `random`
rows are run by the variants themselves: WORKSPACE.md, "AVHBench's tasks").
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest

from agac_jax.codec import num_frames
from agac_jax.codec.pipeline import CodecPipeline
from agac_jax.data import avhbench, load_dataset
from agac_jax.data.common import AudioQASample, WavFile
from agac_jax.eval import captions, results, stages, sweep, tables
from agac_jax.eval.results import Failure, ResultRecord
from configs import avhbench as qwen_configs
from configs import avhbench_pandagpt as panda_configs

CAPTION = avhbench.CAPTION_TASK
L = math.log(2)

ENTRIES = [
    {"video_id": "v1", "task": avhbench.DEFAULT_TASK, "text": "Is a dog visible in the video?", "label": "Yes"},
    {"video_id": "v1", "task": "Video-driven Audio Hallucination", "text": "Is the dog making sound in the audio?",
     "label": "No"},
    {"video_id": "v1", "task": "AV Matching", "text": avhbench.MATCHING_QUESTION, "label": "Yes"},
    {"video_id": "v1", "task": CAPTION, "text": avhbench.CAPTION_REQUEST, "label": " A dog  barks. "},
    {"video_id": "v2", "task": CAPTION, "text": avhbench.CAPTION_REQUEST, "label": "  "},
]


@pytest.fixture()
def release(tmp_path: Path) -> Path:
    (tmp_path / "QA.json").write_text(json.dumps(ENTRIES))
    for video_id in ("v1", "v2"):
        (tmp_path / f"{video_id}.mp4").write_bytes(b"placeholder")
    return tmp_path


# --- loader and samples --------------------------------------------------------------------------


def test_each_task_loads_its_entries_and_captions_are_free_text(release: Path) -> None:
    by_task = {task: avhbench.load_avhbench(release, task) for task in avhbench.TASKS}
    assert [s.sample_id for s in by_task["Video-driven Audio Hallucination"].samples] == ["v1/1"]
    assert [(s.sample_id, s.answer) for s in by_task["AV Matching"].samples] == [("v1/2", "yes")]
    loaded = by_task[CAPTION]
    (sample,) = loaded.samples
    assert (sample.sample_id, sample.answer, sample.reference) == ("v1/3", "", "A dog barks.")
    assert sample.question == avhbench.CAPTION_REQUEST
    assert [(s.item, s.reason) for s in loaded.skipped] == [("v2/0", "empty caption")]
    assert all(s.reference is None for s in by_task["AV Matching"].samples)


def test_data_set_names_follow_the_task(release: Path) -> None:
    config = panda_configs.get_config("captioning")
    config.dataset.root = str(release)
    assert load_dataset(config.dataset)[0] == "avhbench-captioning"
    config.dataset.task = avhbench.DEFAULT_TASK
    assert load_dataset(config.dataset)[0] == "avhbench"  # the poster's task keeps its name
    assert avhbench.task_slug("Some  New task!") == "some_new_task"


def test_free_text_samples_are_validated() -> None:
    audio = WavFile(Path("x.wav"))
    with pytest.raises(ValueError, match="non-empty reference"):
        AudioQASample(sample_id="a", clip_id="a", question="q", answer="", audio=audio, reference=" ")
    with pytest.raises(ValueError, match="non-empty reference"):
        AudioQASample(sample_id="a", clip_id="a", question="q", answer="yes", audio=audio, reference="A dog.")
    with pytest.raises(ValueError, match="'yes' or 'no'"):
        AudioQASample(sample_id="a", clip_id="a", question="q", answer="", audio=audio)
    caption = AudioQASample(sample_id="a", clip_id="a", question="q", answer="", audio=audio, reference="A dog.")
    assert stages.parse_reply(caption, "A DOG, barking!") == "a dog barking"
    yes_no = AudioQASample(sample_id="b", clip_id="a", question="q", answer="no", audio=audio)
    assert stages.parse_reply(yes_no, "Yes, a dog.") == "yes"


# --- records and tables --------------------------------------------------------------------------

REFERENCES = {"s0": "a dog barks", "s1": "a cat sleeps"}
ORIGINALS = {"s0": "A dog barks.", "s1": "a dog sleeps"}


def caption_record(sample: str, method: str, rate: int | None, rho: float, compressed: str | None,
                   failure: Failure | None = None) -> ResultRecord:
    from agac_jax.eval.cider import normalize

    return ResultRecord(
        dataset="avhbench-captioning", sample_id=sample, clip_id=sample, question=avhbench.CAPTION_REQUEST, label="",
        method=method, rate=rate, rho=rho, seed=0, answer_original=ORIGINALS[sample],
        parsed_original=normalize(ORIGINALS[sample]), answer_compressed=compressed,
        parsed_compressed=None if compressed is None else normalize(compressed),
        codec_tokens_before=100 if rate else None, codec_tokens_after=(100 if rho == 1.0 else 50) if rate else None,
        failure=failure, reference=REFERENCES[sample])


def caption_records() -> list[ResultRecord]:
    failure = Failure(stage="codec", error_type="Timeout", message="slow")
    return [caption_record("s0", "original", None, 1.0, ORIGINALS["s0"]),
            caption_record("s1", "original", None, 1.0, ORIGINALS["s1"]),
            caption_record("s0", "fused", 100, 0.5, "a dog"),
            caption_record("s1", "fused", 100, 0.5, "a dog sleeps"),
            caption_record("s1", "random", 100, 0.5, None, failure=failure),
            caption_record("s0", "random", 100, 0.5, "")]


def test_caption_records_round_trip_and_yes_no_lines_are_unchanged() -> None:
    record = caption_records()[2]
    assert ResultRecord.from_dict(json.loads(record.to_json())) == record and record.is_caption
    yes_no = ResultRecord(dataset="d", sample_id="s", clip_id="c", question="q", label="yes", method="original",
                          rate=None, rho=1.0, seed=0, parsed_original="yes", parsed_compressed="yes")
    assert "reference" not in json.loads(yes_no.to_json()) and not yes_no.is_caption
    with pytest.raises(ValueError, match="label ''"):
        ResultRecord(**{**record.__dict__, "label": "yes"})


def test_caption_metrics_by_hand() -> None:
    """References idf: "a" 0, every other n-gram L. Originals idf ("a dog barks", "a dog sleeps"): "a",
    "dog", "a dog" 0. fused s0 "a dog" vs "a dog barks": unigrams and bigrams 1/sqrt2 each, no trigram,
    bigram lengths 1 and 2: 10 sqrt2/4 exp(-1/72); against the original its vectors are all zero: 0.
    s1 equals its original: 1.25 against "a cat sleeps", 7.5 against itself (test_cider)."""
    summary = captions.summarize_caption_rows(captions.caption_seed_metrics(caption_records()))
    rows = {(r.method, r.rho): r for r in summary}
    fused_s0 = 10 * math.sqrt(2) / 4 * math.exp(-1 / 72)
    original, fused, random = rows[("original", 1.0)], rows[("fused", 0.5)], rows[("random", 0.5)]
    assert original.summaries["cider"].mean == pytest.approx((7.5 + 1.25) / 2)
    assert original.summaries["cider_vs_original"].mean == pytest.approx(7.5)
    assert original.summaries["same_caption"].mean == 1.0
    assert fused.summaries["cider"].mean == pytest.approx((fused_s0 + 1.25) / 2)
    assert fused.summaries["delta_cider"].mean == pytest.approx((fused_s0 - 7.5) / 2)
    assert fused.summaries["cider_vs_original"].mean == pytest.approx(7.5 / 2)
    assert fused.summaries["same_caption"].mean == 0.5 and fused.summaries["codec_tokens_kept"].mean == 0.5
    assert (random.failures, random.empty, random.samples_per_seed) == (1, 1, 1.0)
    assert random.summaries["cider"].mean == 0.0
    table = "\n".join(captions.markdown(list(rows.values()), "rvq_mel"))
    assert "## avhbench-captioning (captions)" in table
    cells = f"{(fused_s0 + 1.25) / 2:.3f} | {(fused_s0 - 7.5) / 2:+.3f} | 3.750 | 50.0"
    assert f"| `fused` | 100 | 0.5 | {cells} |" in table


def test_yes_no_tables_ignore_caption_records() -> None:
    yes_no = [ResultRecord(dataset="avhbench-matching", sample_id=f"m{i}", clip_id=f"m{i}", question="q",
                           label=label, method=method, rate=rate, rho=1.0, seed=0, answer_original="Yes",
                           parsed_original="yes", answer_compressed=reply, parsed_compressed=reply.lower(),
                           codec_tokens_before=10 if rate else None, codec_tokens_after=10 if rate else None)
              for i, label in enumerate(("yes", "no")) for method, rate, reply in
              (("original", None, "Yes"), ("codec", 100, "No"))]
    ok_captions = [r for r in caption_records() if r.ok]
    assert captions.split_records(yes_no + ok_captions) == (yes_no, ok_captions)
    rows = tables.summarize_rows(tables.seed_metrics(yes_no))
    assert tables.render_markdown(rows, yes_no) == tables.render_markdown(rows, yes_no + ok_captions)


# --- configs -------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [panda_configs, qwen_configs])
def test_every_task_variant_is_valid(module) -> None:
    assert module.VARIANTS == ("default", "local", "v2a", "v2a_local", "matching", "matching_local", "captioning",
                               "captioning_local")
    for variant in module.VARIANTS:
        config = module.get_config(variant)
        sweep.validate_config(config)
        task, size = qwen_configs.task_variant(variant)
        assert config.dataset.task == task and config.dataset.prompt_suffix is None
        assert (config.scoring.max_new_tokens > 8) == avhbench.is_caption_task(task)
    local = panda_configs.get_config("captioning_local")
    assert local.dataset.generated == 4 and local.scoring.max_new_tokens == panda_configs.LOCAL_CAPTION_TOKENS
    with pytest.raises(ValueError, match="unknown variant"):
        module.get_config("captioning_huge")


def test_the_generated_tree_holds_every_task(tmp_path: Path) -> None:
    root = avhbench.write_generated(tmp_path, num_videos=2, seconds=2.0)
    for task in avhbench.TASKS:
        samples = avhbench.load_avhbench(root, task).samples
        assert [s.clip_id for s in samples] == ["gen00", "gen01"], task
    assert avhbench.load_avhbench(root, avhbench.DEFAULT_TASK).samples[0].sample_id == "gen00/0"
    mtime = (root / "videos" / "gen00.mp4").stat().st_mtime_ns
    qa = root / "AVHBench_QA" / "QA.json"
    qa.write_text(json.dumps([e for e in json.loads(qa.read_text()) if e["task"] == avhbench.DEFAULT_TASK]))
    avhbench.write_generated(tmp_path, num_videos=2, seconds=2.0)  # an older tree gets every task
    assert len(json.loads(qa.read_text())) == 2 * len(avhbench.TASKS)
    assert (root / "videos" / "gen00.mp4").stat().st_mtime_ns == mtime


# --- local PandaGPT sweeps -----------------------------------------------------------------------


class RecordingScorer:
    """The scorer, with the clips and videos of every answer call recorded."""

    def __init__(self, scorer) -> None:
        self._scorer = scorer
        self.answer_calls: list[tuple[list[np.ndarray], list]] = []

    def __getattr__(self, name: str):
        return getattr(self._scorer, name)

    def answer(self, clips, questions, videos=None):
        self.answer_calls.append(([np.array(c) for c in clips], list(videos or [])))
        return self._scorer.answer(clips, questions, videos)


def _local(variant: str, methods: tuple[str, ...]):
    """The variant on its first 2 samples with `methods`, at the captioning variant's answer budget."""
    config = panda_configs.get_config(variant)
    config.dataset.max_samples = 2
    config.methods = methods
    config.scoring.max_new_tokens = panda_configs.LOCAL_CAPTION_TOKENS
    return config


@pytest.fixture(scope="module")
def panda_scorer():
    return sweep.make_scorer(_local("captioning_local", ("original",)))


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def matching_run(panda_scorer, tmp_path_factory):
    """The matching task (a question about the video and the audio) with the codec requests recorded."""
    config = _local("matching_local", ("original", "codec"))
    samples = load_dataset(config.dataset)[1].samples
    videos = {s.clip_id: s.audio.path for s in samples}
    before = {clip: _sha(path) for clip, path in videos.items()}
    requests = []
    submit = CodecPipeline.submit

    def recording_submit(self, request):
        requests.append(request)
        return submit(self, request)

    recorder = RecordingScorer(panda_scorer)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(CodecPipeline, "submit", recording_submit)
        workdir = tmp_path_factory.mktemp("matching")
        outcome = sweep.run_sweep(config, workdir, scorer=recorder)
    return dict(workdir=workdir, outcome=outcome, samples=samples, videos=videos, before=before,
                requests=requests, recorder=recorder)


def test_only_the_soundtrack_is_compressed_on_a_video_question(matching_run) -> None:
    run = matching_run
    soundtracks = {s.clip_id: s.load_waveform() for s in run["samples"]}
    assert run["outcome"].failed == 0 and len(run["requests"]) == 2
    for request in run["requests"]:
        (clip_id,) = [c for c, wave in soundtracks.items() if np.array_equal(request.waveform, wave)]
        assert np.array_equal(request.kept_frames, np.arange(num_frames(soundtracks[clip_id].size, 100)))
    compressed_calls = run["recorder"].answer_calls
    assert compressed_calls and all(videos for _, videos in compressed_calls)
    for clips, videos in compressed_calls:
        assert {str(v) for v in videos} <= {str(p) for p in run["videos"].values()}  # the video files as they are
        for clip, video in zip(clips, videos):
            (clip_id,) = [c for c, p in run["videos"].items() if str(p) == str(video)]
            assert abs(clip.size - soundtracks[clip_id].size) <= 320 and not np.array_equal(clip, soundtracks[clip_id])
    assert {clip: _sha(path) for clip, path in run["videos"].items()} == run["before"]
    assert set(run["recorder"].adapter.video_cache) == {str(p) for p in run["videos"].values()}  # one vector a video
    table = (run["workdir"] / "tables.md").read_text()
    assert "## avhbench-matching" in table and "| `codec` | 100 | 1.0 |" in table
    assert not (run["workdir"] / "captions.csv").exists()


@pytest.fixture(scope="module")
def caption_run(panda_scorer, tmp_path_factory):
    config = _local("captioning_local", ("original", "codec"))
    workdir = tmp_path_factory.mktemp("captioning")
    return workdir, sweep.run_sweep(config, workdir, scorer=panda_scorer)


def test_captioning_runs_end_to_end_with_a_caption_table(caption_run) -> None:
    workdir, outcome = caption_run
    records = results.read_workdir(workdir)
    assert outcome.failed == 0 and len(records) == 2 * 2 and all(r.is_caption and r.label == "" for r in records)
    assert {r.reference for r in records} == {"A colour test pattern moves while a dog barking is heard three times.",
                                              "A colour test pattern moves while a car horn is heard three times."}
    merged = outcome.merged
    assert [(r.method, r.rho) for r in merged.caption_rows] == [("original", 1.0), ("codec", 1.0)]
    assert merged.rows == () and merged.captions_csv == workdir / "captions.csv"
    table = (workdir / "tables.md").read_text()
    assert "## avhbench-captioning (captions)" in table and "## Statistics" not in table
    assert "Samples whose original answer" not in table
    rows = captions.summarize_caption_rows(captions.caption_seed_metrics(records))
    assert all(0.0 <= row.summaries["cider"].mean <= 10.0 for row in rows)
    assert rows[0].summaries["same_caption"].mean == 1.0  # the original row compares each caption with itself
