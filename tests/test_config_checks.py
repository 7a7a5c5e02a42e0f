"""A config made invalid by an override is refused before any model is loaded, with one `error:` line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agac_jax.eval import sweep
from configs import clothoqa_qwen2audio, synthetic_tiny

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("override, match", [
    (dict(backend="rvq_mel"), "config.codec.options: backend_options \\['weights_dir'\\]"),
    (dict(backend="mp3"), "config.codec.backend must be one of"),
])
def test_codec_overrides_are_checked_against_the_backend(override, match) -> None:
    config = clothoqa_qwen2audio.get_config()
    config.codec.backend = override["backend"]
    with pytest.raises(ValueError, match=match):
        sweep.validate_config(config)


def test_model_prompt_format_and_kind_are_checked() -> None:
    config = synthetic_tiny.get_config()
    sweep.validate_config(config)
    config.model.prompt_format = "instruct"
    with pytest.raises(ValueError, match="config.model.prompt_format must be one of \\('chat', 'raw'\\)"):
        sweep.validate_config(config)
    config = clothoqa_qwen2audio.get_config()
    config.model.kind = "qwen3"
    with pytest.raises(ValueError, match="config.model.kind must be one of"):
        sweep.validate_config(config)


def test_evaluate_refuses_a_bad_override_before_loading_anything(tmp_path) -> None:
    missing = tmp_path / "no_such_model"  # never read: the config is refused first
    result = subprocess.run(
        [sys.executable, "-m", "launch.evaluate", "--config=configs/clothoqa_qwen2audio.py",
         f"--config.model.checkpoint_dir={missing}", f"--config.dataset.root={tmp_path}",
         "--config.codec.backend=rvq_mel", f"--workdir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: bad config: config.codec.options:"), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_plan_lines_count_records_and_detectable_differences() -> None:
    lines = sweep.plan_lines(synthetic_tiny.get_config("paired"))
    assert lines[0] == ("synthetic-test: 164 samples; 5 methods, rates (50,), rhos (1.0, 0.5), seeds (0,): "
                        "820 records")
    assert lines[1].startswith("planned: 164 samples x 1 seed(s)")
    assert lines[-1].endswith("9.7 points")
