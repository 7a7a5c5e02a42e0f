"""The sidecar process and its client: pipelining, bad input, crashes, timeouts, shutdown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from agac_jax.codec import CodecClient, CodecReply, CodecRequest, SidecarError, join_frames, num_frames
from agac_jax.codec.pipeline import CodecPipeline
from agac_jax.codec.protocol import ProtocolError, read_message, write_message
from agac_jax.codec.rvq_mel import RvqMelCodec
from agac_jax.codec.service import CodecService
from agac_jax.codec.synthetic import make_signal

REPO = Path(__file__).resolve().parents[1]


def alive(pid: int) -> bool:
    """Whether pid names a live (not zombie) process."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def client() -> Iterator[CodecClient]:
    with CodecClient(backend="rvq_mel", max_in_flight=3) as shared:
        yield shared


def test_sidecar_does_not_import_jax() -> None:
    code = "import sys, agac_jax.codec.sidecar, agac_jax.codec.service; assert 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_protocol_round_trip_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "pipe"
    request = CodecRequest("a", np.ones(3, np.float32), 50, np.array([0]))
    with path.open("wb") as stream:
        write_message(stream, request)
    with path.open("rb") as stream:
        back = read_message(stream)
        assert read_message(stream) is None
    assert back.request_id == "a" and back.token_rate == 50
    np.testing.assert_array_equal(back.waveform, request.waveform)
    path.write_bytes(path.read_bytes()[:-3])
    with path.open("rb") as stream, pytest.raises(ProtocolError, match="inside a message"):
        read_message(stream)


def test_replies_match_the_codec_for_every_rate_in_one_sidecar(client: CodecClient) -> None:
    x = make_signal("click_train", 1.5, seed=7)
    requests = [CodecRequest(f"r{rate}", x, rate, np.array([0, 1, 4, 5, 9])) for rate in (25, 50, 100)]
    replies = {reply.request_id: reply for reply in client.compress(requests)}
    assert set(replies) == {"r25", "r50", "r100"}
    for rate in (25, 50, 100):
        reply = replies[f"r{rate}"]
        assert reply.ok and reply.attempts == 1 and reply.n_frames == num_frames(x.size, rate)
        joined = join_frames(x, np.array([0, 1, 4, 5, 9]), rate)
        codec = RvqMelCodec(rate)
        np.testing.assert_array_equal(reply.tokens, codec.encode(joined))
        assert reply.tokens.shape == (5, 2) and reply.waveform.shape == joined.shape
        np.testing.assert_allclose(reply.waveform, codec.decode(reply.tokens)[: joined.size], atol=1e-5)
        assert {"assemble", "encode", "decode", "total"} <= set(reply.seconds)


def test_all_frames_when_kept_frames_is_none(client: CodecClient) -> None:
    x = make_signal("tone", 0.3, seed=8)
    (reply,) = client.compress([CodecRequest("all", x, 100)])
    assert reply.ok and reply.tokens.shape == (num_frames(x.size, 100), 2) and reply.waveform.size == x.size


BAD_REQUESTS = {
    "nan": (np.array([0.0, np.nan, 0.1], np.float32), 50, None, "InvalidRequest", "NaN or inf"),
    "empty": (np.zeros(0, np.float32), 50, None, "InvalidRequest", "empty"),
    "dtype": (np.zeros(640, np.int16), 50, None, "InvalidRequest", "float32 or float64"),
    "range": (np.zeros(1280, np.float32), 50, np.array([0, 2]), "InvalidRequest", "outside"),
    "duplicate": (np.zeros(3200, np.float32), 50, np.array([1, 1]), "InvalidRequest", "duplicated"),
    "unsorted": (np.zeros(3200, np.float32), 50, np.array([3, 1]), "InvalidRequest", "sorted"),
    "rate": (np.zeros(3200, np.float32), 40, None, "UnsupportedTokenRate", "40"),
}


def test_bad_input_gives_structured_errors_and_the_sidecar_stays_up(client: CodecClient) -> None:
    pid = client.sidecar_pid
    good = make_signal("noise_burst", 0.2, seed=9)
    requests = [CodecRequest(name, w, r, k) for name, (w, r, k, _, _) in BAD_REQUESTS.items()]
    requests.append(CodecRequest("good", good, 50))
    replies: dict[object, CodecReply] = {reply.request_id: reply for reply in client.compress(requests)}
    for name, (_, _, _, error_type, fragment) in BAD_REQUESTS.items():
        failure = replies[name].failure
        assert failure is not None and failure.error_type == error_type and fragment in failure.message, name
        assert replies[name].attempts == 1
    assert replies["good"].ok and replies["good"].tokens.shape == (num_frames(good.size, 50), 2)
    assert client.sidecar_pid == pid and client.restarts == 0 and client.failures == []


def test_pipelining_is_bounded_and_ids_are_unique(client: CodecClient) -> None:
    x = make_signal("chirp_up", 0.5, seed=13)
    for i in range(5):
        client.submit(CodecRequest(i, x, 100))
        assert 1 <= client.in_flight <= 3
    with pytest.raises(ValueError, match="already in flight"):
        client.submit(CodecRequest(4, x, 100))
    replies = list(client.results())
    assert sorted(reply.request_id for reply in replies) == [0, 1, 2, 3, 4]
    assert all(reply.ok for reply in replies) and client.in_flight == 0


def test_submit_checks_its_input(client: CodecClient) -> None:
    with pytest.raises(TypeError, match="CodecRequest"):
        client.submit(("id", np.zeros(3, np.float32), 50))
    with pytest.raises(ValueError, match="backend_options"):
        CodecClient(backend="rvq_mel", backend_options={"weights_dir": "/x"})
    with pytest.raises(ValueError, match="backend must be one of"):
        CodecClient(backend="encodec")


def test_service_in_process_matches_request_contract() -> None:
    service = CodecService("rvq_mel")
    reply = service.handle("not a request")
    assert reply.failure.error_type == "InvalidRequest" and reply.request_id is None
    x = make_signal("am_tone", 0.4, seed=10)
    reply = service.handle(CodecRequest(7, x, 25, np.array([1, 3])))
    assert reply.ok and reply.tokens.shape == (2, 2) and "load" in reply.seconds
    assert "load" not in service.handle(CodecRequest(8, x, 25, np.array([0]))).seconds
    hard_cuts = CodecService("rvq_mel", crossfade_ms=0.0).handle(CodecRequest(9, x, 100, np.array([0, 5])))
    expected = RvqMelCodec(100).encode(join_frames(x, np.array([0, 5]), 100, crossfade_ms=0.0))
    np.testing.assert_array_equal(hard_cuts.tokens, expected)
    with pytest.raises(ValueError, match="crossfade_ms"):
        CodecService("rvq_mel", crossfade_ms=-1.0)


def test_sidecar_killed_mid_request_is_restarted_and_the_retry_gives_the_same_result(caplog) -> None:
    x = make_signal("chirp_down", 12.0, seed=11, snr_db=10.0)
    kept = np.arange(0, num_frames(x.size, 25), 2)
    with CodecClient(backend="rvq_mel") as fresh:
        (reference,) = fresh.compress([CodecRequest("ref", x, 25, kept)])
        first_pid = fresh.sidecar_pid
        fresh.submit(CodecRequest("again", x, 25, kept))
        os.kill(first_pid, signal.SIGKILL)
        with caplog.at_level("WARNING", logger="agac_jax.codec.client"):
            (retried,) = list(fresh.results())
        [restart] = [r.getMessage() for r in caplog.records if r.name == "agac_jax.codec.client"]
        assert restart.startswith(f"codec sidecar pid {first_pid}: SidecarCrashed: sidecar pid {first_pid} stopped")
        assert "(exit code -9); starting a new one (restart 1 of this client) and resending 1 request(s)" in restart
        second_pid = fresh.sidecar_pid
        assert retried.ok and retried.attempts == 2 and fresh.restarts == 1 and fresh.failures == []
        np.testing.assert_array_equal(retried.tokens, reference.tokens)
        np.testing.assert_allclose(retried.waveform, reference.waveform, atol=1e-5)
        assert second_pid != first_pid and not alive(first_pid) and alive(second_pid)
    assert not alive(second_pid) and fresh.sidecar_pid is None


def test_a_request_that_fails_twice_is_recorded_and_the_run_goes_on() -> None:
    slow = make_signal("tone", 2.0, seed=12)
    options = {"griffin_lim_iters": 1_000_000}
    pids = []
    with CodecClient(backend="rvq_mel", backend_options=options, timeout_s=3.0) as hung:
        pids.append(hung.sidecar_pid)
        replies = list(hung.compress([CodecRequest("slow", slow, 25), CodecRequest("bad", slow[:0], 25)]))
        pids.append(hung.sidecar_pid)
    assert [r.request_id for r in replies] == ["slow", "bad"]
    failed, after = replies
    assert failed.failure.error_type == "Timeout" and failed.attempts == 2
    assert failed.failure.message.count("no reply within 3.0 s") == 2
    assert hung.failures == [failed] and hung.restarts == 2
    assert after.failure.error_type == "InvalidRequest" and after.attempts == 1
    assert not any(alive(pid) for pid in pids)


def test_no_orphan_after_an_exception_or_at_interpreter_exit() -> None:
    script = textwrap.dedent(
        """
        from agac_jax.codec import CodecClient
        client = CodecClient(backend="rvq_mel", num_threads=0)
        print(client.sidecar_pid, flush=True)
        raise RuntimeError("the harness failed")
        """
    )
    run = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=180,
    )
    assert "the harness failed" in run.stderr
    assert not alive(int(run.stdout.split()[0]))


def test_exception_in_the_with_block_closes_the_client() -> None:
    with pytest.raises(RuntimeError, match="inside"):
        with CodecClient(backend="rvq_mel", num_threads=0) as closing:
            pid = closing.sidecar_pid
            raise RuntimeError("inside")
    assert not alive(pid)
    with pytest.raises(RuntimeError, match="closed"):
        closing.submit(CodecRequest("late", np.zeros(10, np.float32), 25))
    closing.close()


def test_an_unstartable_sidecar_is_a_clear_error() -> None:
    with pytest.raises(SidecarError, match="failed to start"):
        CodecClient(backend="rvq_mel", python="/bin/false")


def test_pipeline_works_through_its_backlog_while_the_caller_is_busy() -> None:
    """Six requests, at most two at the sidecar: all come back while the caller never waits on them."""
    requests = [CodecRequest(i, make_signal("chirp_up", 1.0, seed=i), 50, np.arange(0, 25, 2)) for i in range(6)]
    with CodecClient(backend="rvq_mel") as direct:
        expected = {reply.request_id: reply for reply in direct.compress(requests)}
    with CodecPipeline(lambda: CodecClient(backend="rvq_mel", max_in_flight=2), max_backlog=3) as pipeline:
        started = time.perf_counter()
        for request in requests:
            pipeline.submit(request)
        assert time.perf_counter() - started < 0.5 and pipeline.pending == 6 and pipeline.over_backlog
        got = {}
        deadline = time.monotonic() + 120
        while len(got) < 6 and time.monotonic() < deadline:
            time.sleep(0.2)  # the caller's own work; it only ever takes what is ready
            got.update({reply.request_id: reply for reply in pipeline.replies(block=False)})
        assert pipeline.pending == 0 and not pipeline.over_backlog and pipeline.wait_seconds == 0.0
        pid = pipeline.client.sidecar_pid
    assert sorted(got) == list(range(6))
    for i, reply in got.items():
        np.testing.assert_array_equal(reply.tokens, expected[i].tokens)
    assert not alive(pid)


def test_pipeline_recovers_a_killed_sidecar_on_its_thread_and_closes_with_work_pending() -> None:
    x = make_signal("chirp_down", 12.0, seed=11, snr_db=10.0)
    kept = np.arange(0, num_frames(x.size, 25), 2)
    with CodecPipeline(lambda: CodecClient(backend="rvq_mel")) as pipeline:
        pipeline.submit(CodecRequest("ref", x, 25, kept))
        (reference,) = pipeline.replies(block=True)
        first_pid = pipeline.client.sidecar_pid
        pipeline.submit(CodecRequest("again", x, 25, kept))
        while pipeline.client.in_flight == 0:  # handed to the sidecar by the pipeline's thread
            time.sleep(0.001)
        os.kill(first_pid, signal.SIGKILL)
        (retried,) = pipeline.replies(block=True)
        assert retried.ok and retried.attempts == 2 and pipeline.client.restarts == 1
        np.testing.assert_array_equal(retried.tokens, reference.tokens)
        for i in range(3):
            pipeline.submit(CodecRequest(f"left{i}", x, 25, kept))
        second_pid = pipeline.client.sidecar_pid
    assert not alive(first_pid) and not alive(second_pid)
    with pytest.raises(TypeError, match="CodecRequest"):
        CodecPipeline(lambda: CodecClient(backend="rvq_mel")).submit("not a request")
