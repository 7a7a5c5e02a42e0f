"""One writer per results file (agac_jax/eval/lock.py), merge's refusal, atomic outputs under kill -9,
and a full disk during an append (agac_jax/eval/results.py)."""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from agac_jax.cli import errors
from agac_jax.eval import lock, results, sweep
from agac_jax.eval.results import ResultRecord, ResultsWriter

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUTS = ("summary.csv", "per_seed.csv", "tables.md", "plots/synthetic-test_accuracy_ac_vs_rho.png",
           "plots/synthetic-test_tokens_vs_ac.png", "plots/synthetic-test_evidence_recall_vs_rho.png")

HOLDER_SCRIPT = """
import sys, time
from agac_jax.eval import lock
held = lock.RunLock(sys.argv[1])
print("locked", flush=True)
sys.stdin.read()  # until the test closes stdin (or kills this process)
held.release()
"""


def record(index: int, method: str = "fused", rate: int | None = 50, rho: float = 0.5, seed: int = 0,
           answer: str = "yes") -> ResultRecord:
    return ResultRecord(
        dataset="synthetic-test", sample_id=f"s{index}", clip_id=f"c{index}", question="is there a dog ?",
        label=("yes", "no")[index % 2], method=method, rate=rate, rho=rho, seed=seed, answer_original="Yes.",
        answer_compressed=answer.capitalize() + ".", parsed_original="yes", parsed_compressed=answer,
        num_frames=50 if rate else None, kept_frames=25 if rate else None, codec_tokens_before=100 if rate else None,
        codec_tokens_after=50 if rate else None, audio_tokens_before=200, audio_tokens_after=100 if rate else 200,
        evidence_recall=0.5 if rate else None,
    )


def grid(indices, seeds=(0, 1)) -> list[ResultRecord]:
    out = []
    for index in indices:
        for seed in seeds:
            out.append(record(index, "original", None, 1.0, seed))
            out.append(record(index, "codec", 50, 1.0, seed, answer=("yes", "no")[(index + seed) % 2]))
            out.append(record(index, "fused", 50, 0.5, seed, answer=("no", "yes")[index % 2]))
    return out


@pytest.fixture()
def holder(tmp_path):
    """Starts a process that holds the lock of a results file; yields (process, results file)."""
    started = []

    def start(results_file: Path) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(results_file)], cwd=REPO_ROOT,
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == "locked"
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


def test_a_second_writer_refuses_naming_the_holder(tmp_path, holder):
    path = tmp_path / "results.jsonl"
    first = holder(path)
    with pytest.raises(lock.LockHeldError) as refused:
        lock.RunLock(path)
    message = str(refused.value)
    assert str(path) in message and f"host {socket.gethostname()}, pid {first.pid}, since " in message
    assert re.search(r"since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", message)
    assert errors.user_error_message(refused.value) == message  # a user error: one line, no traceback
    first.stdin.close()  # the holder releases and exits
    assert first.wait(timeout=30) == 0
    assert not lock.lock_path(path).exists()
    with lock.RunLock(path):  # free again
        pass


def test_a_second_writer_in_the_same_process_refuses_and_the_file_holds_each_key_once(tmp_path):
    path = tmp_path / "results.jsonl"
    with lock.RunLock(path), ResultsWriter(path) as writer:
        writer.append(grid([0]))
        with pytest.raises(lock.LockHeldError, match=f"pid {os.getpid()}"):
            lock.RunLock(path)
        writer.append(grid([1]))
    keys = [r.key for r in results.read_records(path)]
    assert len(keys) == len(set(keys)) == len(grid([0, 1]))


def test_a_killed_writers_lock_is_taken_over_with_a_warning(tmp_path, holder, caplog):
    path = tmp_path / "results.jsonl"
    dead = holder(path)
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait(timeout=30)
    assert lock.lock_path(path).exists()  # kill -9 left it
    with lock.RunLock(path) as taken:
        assert lock.read_holder(lock.lock_path(path)).token == taken.holder.token
    assert f"took over the lock of host {socket.gethostname()}, pid {dead.pid}" in caplog.text
    assert f"its process {dead.pid} is gone" in caplog.text


def _write_lock(path: Path, **fields) -> Path:
    holder = dataclasses.replace(lock.Holder.current(), **fields)
    target = lock.lock_path(path)
    target.write_text(json.dumps(dataclasses.asdict(holder)))
    return target


def test_a_lock_from_before_a_reboot_is_taken_over_even_if_its_pid_is_alive(tmp_path, caplog):
    if lock.boot_id() is None:
        pytest.skip("no /proc/sys/kernel/random/boot_id on this system")
    path = tmp_path / "results.jsonl"
    _write_lock(path, pid=os.getppid(), pid_start=lock.process_start(os.getppid()),
                boot_id="00000000-0000-0000-0000-000000000000")
    with lock.RunLock(path):
        pass
    assert "has rebooted since" in caplog.text
    # the same lock with this boot's id and a live pid is held
    _write_lock(path, pid=os.getppid(), pid_start=lock.process_start(os.getppid()))
    with pytest.raises(lock.LockHeldError, match=f"pid {os.getppid()}"):
        lock.RunLock(path)


def test_a_reused_pid_does_not_keep_a_lock(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    _write_lock(path, pid=os.getppid(), pid_start="1")  # a live pid, but not the process that locked
    if lock.process_start(os.getppid()) is None:
        pytest.skip("no /proc/<pid>/stat on this system")
    with lock.RunLock(path):
        pass
    assert "the pid now belongs to another process" in caplog.text


def test_another_hosts_lock_expires_with_its_heartbeat(tmp_path, caplog):
    path = tmp_path / "results.jsonl"
    target = _write_lock(path, host="another-host.example", pid=12345)
    with pytest.raises(lock.LockHeldError, match="host another-host.example, pid 12345"):
        lock.RunLock(path)  # a fresh heartbeat: held
    past = time.time() - lock.STALE_AFTER_S - 60
    os.utime(target, (past, past))
    with lock.RunLock(path):
        pass
    assert re.search(r"its heartbeat is \d+ s old \(stale after 180 s\)", caplog.text)


def test_the_heartbeat_refreshes_the_lock_and_a_lost_lock_stops_the_writer(tmp_path):
    path = tmp_path / "results.jsonl"
    with lock.RunLock(path, heartbeat_s=0.05) as held, ResultsWriter(path) as writer:
        past = time.time() - 1000
        os.utime(held.path, (past, past))
        deadline = time.time() + 10
        while held.path.stat().st_mtime < past + 500 and time.time() < deadline:
            time.sleep(0.02)
        assert held.path.stat().st_mtime > past + 500
        writer.append(grid([0]))
        _write_lock(path, host="another-host.example", pid=999)  # taken over by another host
        while held.lost is None and time.time() < deadline:
            time.sleep(0.02)
        with pytest.raises(lock.LockLostError, match="taken over by host another-host.example, pid 999"):
            writer.append(grid([1]))
    assert lock.read_holder(lock.lock_path(path)).host == "another-host.example"  # not removed by release
    assert len(results.read_records(path)) == len(grid([0]))


def _workdir(tmp_path: Path, records, name: str = "work") -> Path:
    from configs import common

    workdir = tmp_path / name
    results.ensure_workdir_config(workdir, common.base_config().to_dict())
    with ResultsWriter(workdir / "results.0.jsonl") as writer:
        writer.append(records[::2])
    with ResultsWriter(workdir / "results.1.jsonl") as writer:
        writer.append(records[1::2])
    return workdir


def test_merge_refuses_while_a_writer_holds_a_shard_unless_allow_partial(tmp_path, holder):
    workdir = _workdir(tmp_path, grid(range(4)))
    writer = holder(workdir / "results.1.jsonl")
    with pytest.raises(lock.LockHeldError, match=rf"still writing results.1.jsonl by host .*, pid {writer.pid}.*"
                                                 "--allow_partial"):
        sweep.merge(workdir)
    assert not (workdir / "summary.csv").exists()
    outputs = sweep.merge(workdir, allow_partial=True)
    assert outputs.num_records == len(grid(range(4)))
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(timeout=30)
    assert sweep.merge(workdir).num_records == len(grid(range(4)))  # a dead writer's lock does not block


MERGE_KILLER = """
import os, signal, sys
from agac_jax.eval import sweep, tables
import matplotlib.figure

point = sys.argv[2]
if point == "summary_rows":  # kill -9 after summary.csv's header and first row reached the file
    real = tables.csv.writer
    class Killing:
        def __init__(self, handle):
            self.handle, self.writer, self.rows = handle, real(handle), 0
        def writerow(self, row):
            self.writer.writerow(row)
            self.rows += 1
            if self.rows == 2:
                self.handle.flush()
                os.kill(os.getpid(), signal.SIGKILL)
    tables.csv.writer = Killing
elif point == "second_plot":  # kill -9 with half of the second figure's PNG written
    real = matplotlib.figure.Figure.savefig
    calls = []
    def savefig(self, target, **kwargs):
        calls.append(1)
        if len(calls) < 2:
            return real(self, target, **kwargs)
        import io
        buffer = io.BytesIO()
        real(self, buffer, format="png", dpi=kwargs.get("dpi", 100))
        data = buffer.getvalue()[:1000]
        if hasattr(target, "write"):
            target.write(data)
            target.flush()
        else:
            open(target, "wb").write(data)
        os.kill(os.getpid(), signal.SIGKILL)
    matplotlib.figure.Figure.savefig = savefig
sweep.merge(sys.argv[1])
"""


def _snapshot(workdir: Path) -> dict[str, bytes]:
    return {name: (workdir / name).read_bytes() for name in OUTPUTS if (workdir / name).is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("point", ["summary_rows", "second_plot"])
def test_kill_9_during_merge_leaves_the_previous_or_the_new_outputs(tmp_path, point):
    records = grid(range(6))
    workdir = _workdir(tmp_path, records[: len(records) // 2])
    sweep.merge(workdir)
    old = _snapshot(workdir)
    for index, name in ((0, "results.0.jsonl"), (1, "results.1.jsonl")):
        with ResultsWriter(workdir / name) as writer:
            writer.append(records[len(records) // 2:][index::2])
    reference = tmp_path / "reference"
    shutil.copytree(workdir, reference)
    sweep.merge(reference)
    new = _snapshot(reference)
    assert set(old) == set(new) == set(OUTPUTS) and all(old[name] != new[name] for name in ("summary.csv", "tables.md"))

    killed = subprocess.run([sys.executable, "-c", MERGE_KILLER, str(workdir), point], cwd=REPO_ROOT,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    after = _snapshot(workdir)
    assert set(after) == set(OUTPUTS)
    for name in OUTPUTS:
        assert after[name] in (old[name], new[name]), f"{name} is neither the previous nor the new file"
    if point == "summary_rows":
        assert after == old
    else:  # the tables were replaced, the first plot too; the second plot is still the previous one
        assert after["summary.csv"] == new["summary.csv"] and after["tables.md"] == new["tables.md"]
        assert after["plots/synthetic-test_tokens_vs_ac.png"] == old["plots/synthetic-test_tokens_vs_ac.png"]
    assert list(workdir.rglob(".*.tmp"))  # the killed writer's temporary file is left ...
    sweep.merge(workdir)
    assert _snapshot(workdir) == new
    assert not list(workdir.rglob(".*.tmp"))  # ... and removed by the next merge


class OsProxy:
    """`os` for results.py only, with some functions replaced (the rest of the process keeps `os`)."""

    def __init__(self, **replaced):
        self.replaced = replaced

    def __getattr__(self, name):
        return self.replaced.get(name) or getattr(os, name)


class FullDisk:
    """Fault injection for `os.write` in results.py: the `fail_at`-th write puts `partial` bytes on
    the disk, then raises ENOSPC (as a filesystem that fills up mid-line)."""

    def __init__(self, fail_at: int, partial: int):
        self.fail_at, self.partial, self.calls = fail_at, partial, 0

    def __call__(self, fd: int, data) -> int:
        self.calls += 1
        if self.calls == self.fail_at:
            os.write(fd, bytes(data[: self.partial]))
            raise OSError(errno.ENOSPC, "No space left on device")
        return os.write(fd, data)


@pytest.mark.parametrize("truncate_works", [True, False])
def test_a_full_disk_mid_record_names_the_file_and_the_free_space_and_resume_is_clean(
        tmp_path, monkeypatch, caplog, truncate_works):
    path = tmp_path / "results.jsonl"
    first, second, third = grid([0]), grid([1]), grid([2])
    replaced = {"write": FullDisk(fail_at=2, partial=37)}
    if not truncate_works:
        def no_truncate(fd, size):
            raise OSError(errno.ENOSPC, "No space left on device")
        replaced["ftruncate"] = no_truncate
    monkeypatch.setattr(results, "os", OsProxy(**replaced))
    writer = ResultsWriter(path)
    writer.append(first)
    with pytest.raises(results.DiskFullError) as full:
        writer.append(second)
    writer.close()
    message = errors.user_error_message(full.value)
    assert message == str(full.value)
    assert f"no space left on the device appending records to {path} (" in message
    assert re.search(r"\((\d+ B|\d+\.\d (KiB|MiB|GiB|TiB)) free on its filesystem\)", message)
    assert "rerun the same command" in message and f"the {len(first)} records written by this run" in message
    monkeypatch.undo()

    on_disk = path.read_bytes()
    assert on_disk.endswith(b"\n") == truncate_works  # cut back at once, or left for the resume to cut
    with ResultsWriter(path) as resumed:  # the resume
        resumed.append(second + third)
    assert ("cut a truncated last line (37 bytes)" in caplog.text) != truncate_works
    keys = [r.key for r in results.read_records(path)]
    assert keys == [r.key for r in first + second + third]


def test_a_full_disk_at_fsync_is_reported_the_same_way(tmp_path, monkeypatch):
    path = tmp_path / "results.jsonl"
    with ResultsWriter(path) as writer:
        writer.append(grid([0]))

        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(results, "os", OsProxy(fsync=full))
        with pytest.raises(results.DiskFullError, match=re.escape(str(path))):
            writer.append(grid([1]))
    monkeypatch.undo()
    assert [r.key for r in results.read_records(path)] == [r.key for r in grid([0])]


def test_a_full_disk_while_writing_a_table_keeps_the_previous_one_and_names_it(tmp_path, monkeypatch):
    from agac_jax.eval import atomic, tables

    rows = tables.summarize_rows(tables.seed_metrics(grid(range(2))))
    path = tables.write_summary_csv(rows, tmp_path / "summary.csv")
    before = path.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(atomic, "os", OsProxy(fsync=full))
    with pytest.raises(OSError) as failed:
        tables.write_summary_csv(tables.summarize_rows(tables.seed_metrics(grid(range(4)))), path)
    monkeypatch.undo()
    assert path.read_bytes() == before and not list(tmp_path.glob(".*.tmp"))
    message = errors.user_error_message(failed.value)
    assert f"no space left on the device writing {path} (" in message and " free on its filesystem" in message


def test_the_lock_works_on_a_filesystem_without_hard_links(tmp_path, monkeypatch):
    def no_link(source, target):
        raise OSError(errno.EPERM, "Operation not permitted")
    monkeypatch.setattr(lock, "os", OsProxy(link=no_link))
    path = tmp_path / "results.jsonl"
    with lock.RunLock(path) as held:
        assert lock.read_holder(held.path).token == held.holder.token
        with pytest.raises(lock.LockHeldError, match=f"pid {os.getpid()}"):
            lock.RunLock(path)
    assert not held.path.exists()
