"""Pins the generated benchmarks byte for byte: the clips, questions, answers, evidence, labels and split
files of a small test split of each benchmark (`agac_jax.data.synthetic_audio`: synthetic, the shipped
sweep's split, and scenes), and the codec's test signals (`agac_jax.codec.synthetic`).

Every number the project reports on these benchmarks rests on these exact clips, so a change of any
renderer, layout, schedule or seed derivation must fail here, even when it keeps every property the
other tests check. A deliberate change of the generated data replaces the hashes below (and
invalidates the trained models' and the results' claims about the old data).

The WAV files are hashed with the timestamp of libsndfile's PEAK chunk zeroed (the only bytes that
change from one write to the next).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from agac_jax.codec import synthetic as codec_synthetic
from agac_jax.data.synthetic_audio import scenes, synthetic

SYNTHETIC_TEST_8 = {  # synthetic.generate_split("test", 8, 0), configs/synthetic_tiny.py's split
    "clips": {
        "test-seed0-00000": "26622b09885bfcda4ebdcbd3e1fd88a06ab6e1205964776f39d49d14c8c15a4f",
        "test-seed0-00001": "98c4d76b6f8cb57b6ff74bc71a54633f14da43008df6b4661c956d20e277d4ab",
        "test-seed0-00002": "aa2b5cc8fe7b71f1aed8c7ac69c10f1ec5f540faa1ecbaf4a1632f69c2f176fd",
        "test-seed0-00003": "10440cc2bd43ab35524f52dd1805626152a499517577b574742441c37a8cd4d2",
        "test-seed0-00004": "e640205a2bf9ae3955cdfb9a645cbe4ea959ac50f6512ec0b5c49551946d86be",
        "test-seed0-00005": "767b0420fbeaf854cc434c3ac8b1b19befee9a2841daa4d5fe8a079c37ee70f7",
        "test-seed0-00006": "a1764267a266ab5d1aeead6c6ed56fc2bff8363b554a0e65794f20075b678556",
        "test-seed0-00007": "9070475ee0fbaf9a7835c0a9061ae9964cef9a6257dfaa854c6e2f0901b9562d",
    },
    "all_questions": "63673e6f2cc1426b77dfaa7057e7e5611171bf76afc2d4bc52b1b82675567828",
    "manifest": "4b308c0a2f67201269acfd56d5231e4dddc6a9363904509c6c87f6a769667807",
    "wavs": {
        "test-seed0-00000": "3642e53954d38d183d4ec6052da50e5877b603f75183f28fc3c09e2e116c2703",
        "test-seed0-00001": "dcfb6d2dab9fef3b0cefc234bd2690c1e024e6da2b9a9f4c06e9f0b60e906208",
        "test-seed0-00002": "872a5cb617a5c3d9a7d6acd4b767e70921d1307c8487bd2f371bf2baff3b2e15",
        "test-seed0-00003": "c2860cd1d4642d11f2f52e4ab0ac1328a72996a7046ee71dfed8a1512565cb13",
        "test-seed0-00004": "9304850ab699156a5e53cd2fd08d5341234ccc0f7a5d22012be9ee5107c614d0",
        "test-seed0-00005": "9f9b3341e9c165c56efffbe95d3e1359c67146bf9c03e1512e36c5b2cc3db499",
        "test-seed0-00006": "cf9e6c75ae1807731ac3b358510cd9bd8c9a2e75c5c042b7a6154387a2f2687c",
        "test-seed0-00007": "cde0db49b260b325c5cbaf0e6f23d453c508a65a6c68dc9016c45e9d646e9374",
    },
}

SCENES_TEST_4 = {  # scenes.generate_split("test", 4, 0)
    "clips": {
        "scenes-test-seed0-00000": "fb00859afe3ff2356b46a1a38c92ef3de591db364c1b3df60d3255bda8861818",
        "scenes-test-seed0-00001": "198a65aba19ec41300773e475e770ca62985b9146494431a271a921f933ed6d8",
        "scenes-test-seed0-00002": "43def2cf35ea7721312de2f77e42b20bf1553369e9a2f7f53569143f54f34d59",
        "scenes-test-seed0-00003": "46cb2611ea3743ee34901ee1c876f3645dc1051ef3a07d3cc53ef67f9822ac80",
    },
    "all_questions": "fbfd18f4bf15f45889ceab84900cdb56f5b9b9d64d0a87bbd7266066d0e3fa01",
    "manifest": "10fb59cff28e3b86b57b7b4eff0d804c86725b700c3fa1064216e98bfcc9d76a",
    "wavs": {
        "scenes-test-seed0-00000": "0a29e54fb8b2ee7cd3d4c8ce6ad4de955ffe8a347a68e88f4c150cb497db38ec",
        "scenes-test-seed0-00001": "b5855b9ebf38772ba16d220caa3ed91f492904d003218ac847a3c447f6ff2d3b",
        "scenes-test-seed0-00002": "41a7635238177b47a6bc4b411435e636d0ca0b0bb175030efdc6b0916cfc3c9f",
        "scenes-test-seed0-00003": "1c23e24169b0551c89d4c7ba1c2b21a6ce8393e22881868a51424c9048e4cc1e",
    },
}

CODEC_SIGNALS = {  # codec_synthetic.make_signal(kind, 1.0, seed=0, snr_db=20.0)
    "tone": "f257f38446e06bc604351c7f46cca1bec7e907ae1b30ff3ab4f5cee6a6f2e6b2",
    "chirp_up": "012b055e8ebb4534b654b71e49b32e623d9248361c5dba00044132057583a2d4",
    "chirp_down": "478d1f9fff6578256472440504065bd0a138e64708be63dbc473f9bbac6afe35",
    "noise_burst": "5d6a733d2294681d714ccfe8d54896f83fff4d9d71515ac5c6779d6194741bfe",
    "click_train": "688b7c227ddf1ce12c9eb5efa912578babdc42e68fcce21ae5b206136f962cd5",
    "am_tone": "c675ff6bef12cd3496f69d9654fea248eb2db074728bb67f05a58c5964ccb9f1",
}
CODEC_SCENE = "2bd045bfad8acf514dd69f3986272407c1e97ed568e1d4ce69ee3d59d54d91c1"  # random_scene(rng(0), 2.0)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wav_bytes(path: Path) -> bytes:
    """The file's bytes with the timestamp of its PEAK chunk (4 bytes after the chunk's version) zeroed."""
    data = bytearray(path.read_bytes())
    peak = data.find(b"PEAK")
    assert peak > 0, f"{path} has no PEAK chunk"
    data[peak + 12 : peak + 16] = bytes(4)
    return bytes(data)


def _questions_digest(samples) -> str:
    return _sha(json.dumps([[s.sample_id, s.kind, s.question, s.answer, [list(i) for i in s.evidence]]
                            for s in samples]).encode())


@pytest.mark.parametrize("module, num_clips, pinned", [(synthetic, 8, SYNTHETIC_TEST_8), (scenes, 4, SCENES_TEST_4)],
                         ids=["synthetic", "scenes"])
def test_a_small_split_is_byte_identical(tmp_path, module, num_clips: int, pinned: dict) -> None:
    samples = module.generate_split("test", num_clips, 0)
    clips = {}
    for sample in samples:
        clips.setdefault(sample.clip_id, sample)
    waveforms = {clip_id: sample.load_waveform() for clip_id, sample in clips.items()}
    assert {clip_id: _sha(w.tobytes()) for clip_id, w in waveforms.items()} == pinned["clips"]
    assert _questions_digest(module.all_questions(samples)) == pinned["all_questions"]

    manifest = module.write_split(tmp_path, samples)  # questions, answers, evidence, events (labels), backgrounds
    assert _sha(manifest.read_bytes()) == pinned["manifest"]
    wavs = {path.stem: _sha(_wav_bytes(path)) for path in sorted((tmp_path / "audio").glob("*.wav"))}
    assert wavs == pinned["wavs"]
    read = module.read_split(tmp_path)
    assert [s.sample_id for s in read] == [s.sample_id for s in samples]
    for sample in read:
        np.testing.assert_array_equal(sample.load_waveform(), waveforms[sample.clip_id])


def test_the_codec_test_signals_are_byte_identical() -> None:
    signals = {kind: _sha(codec_synthetic.make_signal(kind, 1.0, 0, snr_db=20.0).tobytes())
               for kind in codec_synthetic.SIGNAL_KINDS}
    assert signals == CODEC_SIGNALS
    assert _sha(codec_synthetic.random_scene(np.random.default_rng(0), 2.0).tobytes()) == CODEC_SCENE
