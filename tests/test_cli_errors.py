"""User errors end a command with one `error:` line and exit 2; bugs keep their traceback
(agac_jax/cli/errors.py); two real `launch.evaluate` runs on one workdir do not both write."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agac_jax.cli import errors
from agac_jax.eval import results, sweep
from configs import common

REPO_ROOT = Path(__file__).resolve().parents[1]
# The shipped tiny model on one generated clip, `original` only (no scoring program, no codec sidecar).
TINY_RUN = ["--config=configs/synthetic_tiny.py:local", "--config.methods=('original',)", "--config.dataset.num_clips=1",
            "--config.seeds=(0,)", "--config.rhos=(1.0,)", "--config.scoring.batch_size=1",
            "--config.scoring.max_new_tokens=2"]


def evaluate(*args: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "launch.evaluate", *args], cwd=REPO_ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen,
                            env={**{k: v for k, v in os.environ.items() if k != errors.TRACEBACK_ENV}, **(env or {})})


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


@pytest.mark.slow
def test_a_bad_config_value_is_one_error_line_without_a_traceback(tmp_path):
    process = evaluate(*TINY_RUN, "--config.rhos=(0.0,)", f"--workdir={tmp_path / 'work'}")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == errors.EXIT_USER_ERROR
    assert error_lines(stderr) == ["error: bad config: Keep ratio rho must lie in (0, 1]; got 0.0."]
    assert stderr.rstrip().splitlines()[-1].startswith("error:")
    assert "Traceback" not in stderr
    assert not (tmp_path / "work").exists()  # refused before anything was written


@pytest.mark.slow
def test_the_traceback_of_a_user_error_is_shown_with_verbose(tmp_path):
    process = evaluate(*TINY_RUN, "--config.methods=('fused', 'magic')", f"--workdir={tmp_path}", "--verbose")
    _, stderr = process.communicate(timeout=300)
    assert process.returncode != 0
    assert "Traceback" in stderr and "ConfigError: bad config: config.methods must be" in stderr and "magic" in stderr


@pytest.mark.parametrize("field, value, message", [
    ("rates", (30,), "config.rates must be a non-empty subset of (25, 50, 100); bad: [30]"),
    ("methods", ("fused", "magic"), "unknown: ['magic']"),
    ("rhos", (0.0,), "rho must lie in (0, 1]"),
    ("dataset.num_clips", 0, "config.dataset.num_clips must be >= 1"),
])
def test_config_values_are_refused_naming_the_field(field, value, message):
    """What launch.evaluate's `check_config` turns into `error: bad config: ...` (shown above for two
    of them; it is not imported here, so its flags stay out of this process)."""
    config = common.base_config()
    config.model.checkpoint_dir = "/models/somewhere"
    section, _, name = field.rpartition(".")
    setattr(config[section] if section else config, name, value)
    with pytest.raises(ValueError) as refused:
        sweep.validate_config(config)
    assert message in str(refused.value)


def _run_wrapped(raise_error: BaseException, capsys) -> tuple[int, str]:
    def main(argv):
        raise raise_error

    with pytest.raises(SystemExit) as exited:
        errors.main(main)(["prog"])
    return exited.value.code, capsys.readouterr().err


def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(errors.TRACEBACK_ENV, raising=False)
    cases = [
        (errors.ConfigError("bad config: x\n  more detail"), "error: bad config: x more detail"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/clip.wav"),
         "error: [Errno 2] No such file or directory: '/data/clip.wav'"),
        (results.ConfigMismatchError("the workdir w holds results of a different config"),
         "error: the workdir w holds results of a different config"),
        (ModuleNotFoundError("No module named 'semanticodec'", name="semanticodec"),
         "error: the optional package 'semanticodec' is not installed"),
    ]
    for error, expected in cases:
        code, stderr = _run_wrapped(error, capsys)
        assert code == errors.EXIT_USER_ERROR
        assert len(stderr.splitlines()) == 1 and stderr.startswith(expected), stderr
    code, stderr = _run_wrapped(OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "tables.md")), capsys)
    assert code == errors.EXIT_USER_ERROR and len(stderr.splitlines()) == 1
    assert f"no space left on the device writing {tmp_path / 'tables.md'} (" in stderr and " free on its" in stderr


def test_project_input_errors_count_by_class_name():
    from agac_jax.models.qwen2_audio.checkpoints import CheckpointError
    from agac_jax.codec.base import BackendUnavailableError

    assert errors.user_error_message(CheckpointError("missing keys: a\nunexpected: b")) == "missing keys: a unexpected: b"
    assert errors.user_error_message(BackendUnavailableError("pip install semanticodec")) == "pip install semanticodec"


@pytest.mark.parametrize("bug", [ValueError("operands could not be broadcast"), TypeError("bad operand"),
                                 KeyError("x"), AssertionError(), ModuleNotFoundError("No module named 'numpy'",
                                                                                       name="numpy"),
                                 OSError(errno.EIO, "I/O error")])
def test_programming_errors_keep_their_traceback(bug, capsys, monkeypatch):
    monkeypatch.delenv(errors.TRACEBACK_ENV, raising=False)

    def main(argv):
        raise bug

    with pytest.raises(type(bug)):
        errors.main(main)(["prog"])
    assert "error:" not in capsys.readouterr().err


def test_the_environment_variable_shows_a_user_errors_traceback(monkeypatch):
    monkeypatch.setenv(errors.TRACEBACK_ENV, "1")

    def main(argv):
        raise errors.ConfigError("bad config: x")

    with pytest.raises(errors.ConfigError):
        errors.main(main)(["prog"])


@pytest.mark.slow
def test_two_evaluators_on_one_workdir_do_not_both_write(tmp_path):
    """As in the issue: two runs started together; one writes, the other exits naming it."""
    workdir = tmp_path / "work"
    first = evaluate(*TINY_RUN, f"--workdir={workdir}")
    second = evaluate(*TINY_RUN, f"--workdir={workdir}")
    outputs = {first.pid: first.communicate(timeout=600), second.pid: second.communicate(timeout=600)}
    codes = {first.pid: first.returncode, second.pid: second.returncode}
    winner = [pid for pid, code in codes.items() if code == 0]
    loser = [pid for pid, code in codes.items() if code != 0]
    assert len(winner) == len(loser) == 1, {pid: out[1][-1500:] for pid, out in outputs.items()}
    stderr = outputs[loser[0]][1]
    assert codes[loser[0]] == errors.EXIT_USER_ERROR and "Traceback" not in stderr
    [line] = error_lines(stderr)
    assert f"{workdir / 'results.jsonl'} is being written by another run (host " in line
    assert f"pid {winner[0]}, since " in line
    records = results.read_records(workdir / "results.jsonl")
    keys = [record.key for record in records]
    assert keys and len(keys) == len(set(keys))
    assert "original" in outputs[winner[0]][0]  # the winner printed the table
    assert not list(workdir.glob("*.lock"))  # and released its lock


def test_usage_errors_bad_flags_and_ctrl_c_are_one_line(capsys, monkeypatch):
    """absl would print its whole usage text before a bad flag value, two lines and exit 1 for a flag
    that does not parse, and a traceback for Ctrl-C."""
    from absl import app

    monkeypatch.delenv(errors.TRACEBACK_ENV, raising=False)
    for raised, code, expected in [
        (app.UsageError("--keep=2: Keep ratio rho must lie in (0, 1]"), errors.EXIT_USER_ERROR,
         "error: --keep=2: Keep ratio rho must lie in (0, 1] (see --helpshort)\n"),
        (KeyboardInterrupt(), errors.EXIT_INTERRUPTED, "error: interrupted; rerun it\n"),
    ]:
        def main(argv, raised=raised):
            raise raised

        with pytest.raises(SystemExit) as exited:
            errors.main(main, interrupt_hint="; rerun it")(["prog"])
        assert exited.value.code == code and capsys.readouterr().err == expected
    with pytest.raises(SystemExit) as exited:
        errors.parse_flags(["prog", "--no_such_flag_anywhere=1"])
    assert exited.value.code == errors.EXIT_USER_ERROR
    assert capsys.readouterr().err == "error: Unknown command line flag 'no_such_flag_anywhere' (see --helpshort)\n"


@pytest.mark.slow
def test_launch_tools_end_bad_input_with_one_line(tmp_path):
    """A truncated model.safetensors (launch.score), a stray argument (launch.evaluate): one line, exit 2."""
    import numpy as np
    import soundfile

    checkpoint = tmp_path / "truncated"
    shutil.copytree(REPO_ROOT / "assets" / "tiny_qwen2audio", checkpoint)
    weights = checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    soundfile.write(tmp_path / "clip.wav", np.zeros(16_000, np.float32), 16_000)
    score_args = [f"--checkpoint={checkpoint}", f"--audio={tmp_path / 'clip.wav'}", "--question=is there a dog ?"]
    runs = [subprocess.Popen([sys.executable, "-m", tool, *args], cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env={k: v for k, v in os.environ.items() if k != errors.TRACEBACK_ENV})
            for tool, args in [("launch.score", score_args),
                               ("launch.evaluate", [f"--workdir={tmp_path / 'work'}", "stray"])]]
    (_, score), (_, evaluate) = [run.communicate(timeout=300) for run in runs]
    assert [run.returncode for run in runs] == [errors.EXIT_USER_ERROR] * 2
    [line] = error_lines(score)
    assert line.startswith(f"error: {weights} ({weights.stat().st_size} bytes) is not a readable safetensors file: ")
    assert line.endswith("It is truncated or corrupt (an interrupted download or copy?); download or copy it again")
    assert error_lines(evaluate) == ["error: unexpected arguments: ['stray'] (see --helpshort)"]
    for stderr in (score, evaluate):
        assert "Traceback" not in stderr and stderr.rstrip().splitlines()[-1].startswith("error:")
        assert "USAGE" not in stderr and "flags:" not in stderr


@pytest.mark.slow
def test_ctrl_c_ends_a_sweep_with_one_line_and_exit_130(tmp_path):
    """SIGINT while the sweep scores (the codec sidecar ignores it and is stopped by the client)."""
    import signal

    with_codec = [arg for arg in TINY_RUN if not arg.startswith("--config.methods=")]
    argv = ["launch.evaluate", *with_codec, "--config.methods=('original', 'codec')", f"--workdir={tmp_path}"]
    # Python's own SIGINT handler even where this test runs with SIGINT ignored (a background job).
    script = ("import runpy, signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
              f"sys.argv = {argv!r}; runpy.run_module('launch.evaluate', run_name='__main__', alter_sys=True)")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE,
                               env={k: v for k, v in os.environ.items() if k != errors.TRACEBACK_ENV})
    deadline = time.monotonic() + 300
    while not (tmp_path / "results.jsonl").exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == errors.EXIT_INTERRUPTED, stderr[-2000:]
    assert error_lines(stderr) == ["error: interrupted; rerun the same command to resume: every finished record is kept"]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
