"""The newer families end to end through the same sweep: ClothoAQA (its parquet export, lmms-eval's
protocol) on each family's `local` config variant, a tiny random model of the released architecture,
the offline codec. Nothing family-specific runs outside the family's package and its config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agac_jax.data.clotho_aqa import LMMS_EVAL_PROMPT_SUFFIX
from agac_jax.eval import sweep
from tests.test_clotho_parquet import _wav_bytes, _write_shard


@pytest.fixture(scope="module")
def clotho_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("clotho") / "ClothoAQA"
    tone, higher = _wav_bytes(440, 2.0), _wav_bytes(1320, 3.0)
    _write_shard(root / "clotho_aqa" / "clotho_aqa_test_filtered-00000-of-00001.parquet", [
        ({"bytes": tone, "path": "tone.wav"}, "Is a tone playing?", "yes"),
        ({"bytes": higher, "path": "higher.wav"}, "Is a dog barking?", "no"),
    ])
    return root


@pytest.mark.parametrize("family,tokens", [("audio_flamingo3", (50, 75)), ("voxtral", (375, 375))])
def test_the_local_variant_runs_end_to_end(family, tokens, clotho_root, tmp_path):
    module = __import__(f"configs.clothoqa_{family}", fromlist=["get_config"])
    config = module.get_config("local")
    config.dataset.root = str(clotho_root)
    config.scoring.max_new_tokens = 2
    outcome = sweep.run_sweep(config, tmp_path)
    assert outcome.failed == 0 and outcome.written == 2 * 4  # original, codec, fused, random per sample
    records = [json.loads(line) for line in outcome.results_file.read_text().splitlines()]
    assert {r["prompt_suffix"] for r in records} == {LMMS_EVAL_PROMPT_SUFFIX}
    originals = {r["sample_id"]: r for r in records if r["method"] == "original"}
    assert sorted(r["audio_tokens_before"] for r in originals.values()) == list(tokens)
    fused = [r for r in records if r["method"] == "fused"]
    assert all(r["kept_frames"] == -(-r["num_frames"] // 2) for r in fused)  # rho 0.5 of the clip's frames
    assert "| fused |" in Path(outcome.merged.tables_md).read_text()
