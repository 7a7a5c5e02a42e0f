"""Multi-process evaluation as it runs on a pod: real JAX processes on this machine, coordinated by
`jax.distributed.initialize` over 127.0.0.1, each running `python -m launch.evaluate` (the command
users run) with a random-init tiny model on its shard of six short synthetic samples, then `--merge`.

Checked against one single-process run of the same config (shared by the tests): four processes
merge to the same records and summary.csv; when process 1 is killed with SIGKILL mid-run, process 0
finishes its own shard and ends with one line naming shard 1 (no C++ abort), and every process rerun
with the same ids resumes its own shard and loses nothing; the merge refuses, naming the shard, while
one is missing or incomplete; a resume with another process count re-shards by key; a coordinator
on 127.0.0.1 is not reachable on the host's other addresses.

No collective is used: every process scores its shard on its own devices (`scorer.make_mesh`).
Processes are started in their own sessions and killed, with their codec sidecars, in a `finally`.
They share a persistent compilation cache (the suite's, tests/conftest.py, whose programs
tests/test_evaluate_e2e.py's identical settings may already have filled; else the single-process
run fills it), so the others load their programs instead of compiling them (the suite runs on 2 cores).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import flax.linen as nn
import jax
import pytest

from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.data.synthetic_audio import synthetic
from agac_jax.eval import distributed, results, sweep
from agac_jax.eval.distributed import IncompleteShardsError, ShardManifest
from agac_jax.eval.results import TaskKey
from agac_jax.models.qwen2_audio.model import init_params
from agac_jax.training import model as train_model

REPO_ROOT = Path(__file__).resolve().parents[1]
NUM_SAMPLES = 6  # shards of 4 and 2 samples over 2 processes; 2, 1, 2, 1 over 4
RECORDS_PER_SAMPLE = 4  # original; codec r = 50; fused and random at rho = 0.7; seed 0
MAX_CLIP_SECONDS = 4.5  # every clip in the one 5 s bucket: one compilation per program
RUN_TIMEOUT_S = 300
# synthetic_tiny's `local` grid with one seed; occlusion in one chunk of gates (fewer blocks to compile);
# two samples a batch, so a process writes its shard in steps and can be killed between them.
OVERRIDES = ("--config.seeds=(0,)", "--config.scoring.buckets_seconds=(5,)", "--config.scoring.batch_size=2",
             "--config.scoring.max_new_tokens=3", "--config.scoring.occlusion_chunk=128",
             "--config.runtime.batch_samples=2", "--config.runtime.progress_log_every_s=1000")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A random-init tiny model (as tests/test_evaluate_e2e.py's) saved as a Hugging Face directory."""
    import importlib.util

    directory = tmp_path_factory.mktemp("tiny_model")
    spec = importlib.util.spec_from_file_location("train_tiny", REPO_ROOT / "configs" / "train_tiny.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = module.get_config()
    cfg.model.audio_d_model, cfg.model.audio_layers, cfg.model.audio_heads, cfg.model.audio_ffn = 32, 1, 2, 64
    cfg.model.hidden_size, cfg.model.layers, cfg.model.heads, cfg.model.kv_heads = 32, 2, 2, 1
    cfg.model.intermediate_size = 64
    tokenizer = train_model.build_processor(directory, cfg.num_mel_bins)
    config = train_model.model_config(cfg, tokenizer)
    params = nn.meta.unbox(jax.jit(lambda key: init_params(config, key))(jax.random.key(0)))
    checkpoints.save_hf_directory(directory, config, params, train_model.generation_config(config, 3))
    return directory


@dataclasses.dataclass(frozen=True)
class Inputs:
    """What every process of every run gets: the model, the data, the environment."""

    model_dir: Path
    split_dir: Path
    env: dict[str, str]


@pytest.fixture(scope="module")
def inputs(model_dir, split_dir, tmp_path_factory) -> Inputs:
    """CPU only, and one persistent compilation cache for every process."""
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(tmp_path_factory.mktemp("jax_cache"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_COMPILATION_CACHE_DIR": cache,
           "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    return Inputs(model_dir, split_dir, env)


@pytest.fixture(scope="module")
def split_dir(tmp_path_factory) -> Path:
    samples = [s for s in synthetic.generate_split("test", 40, 0) if s.num_samples <= MAX_CLIP_SECONDS * 16_000]
    assert len(samples) >= NUM_SAMPLES
    directory = tmp_path_factory.mktemp("split")
    synthetic.write_split(directory, samples[:NUM_SAMPLES])
    return directory


def evaluate_command(workdir: Path, inputs: Inputs, *extra: str) -> list[str]:
    return [sys.executable, "-m", "launch.evaluate", "--config=configs/synthetic_tiny.py:local",
            f"--config.dataset.root={inputs.split_dir}", f"--config.model.checkpoint_dir={inputs.model_dir}",
            *OVERRIDES, f"--workdir={workdir}", *extra]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """N `launch.evaluate` processes of one multi-process run, each in its own session, logging to a file."""

    def __init__(self, workdir: Path, inputs: Inputs, num_processes: int, logs: Path):
        address = f"127.0.0.1:{free_port()}"
        self.logs = [logs / f"{workdir.name}.p{i}.{time.monotonic_ns()}.log" for i in range(num_processes)]
        self.processes: list[subprocess.Popen] = []
        for index, log in enumerate(self.logs):
            command = evaluate_command(
                workdir, inputs, "--config.runtime.distributed=True",
                f"--config.runtime.coordinator_address={address}",
                f"--config.runtime.coordinator_bind_address={address}",
                f"--config.runtime.num_processes={num_processes}", f"--config.runtime.process_id={index}",
                "--config.runtime.initialization_timeout_s=120", "--config.runtime.heartbeat_timeout_s=10")
            with log.open("wb") as handle:
                self.processes.append(subprocess.Popen(command, cwd=REPO_ROOT, env=inputs.env, stdout=handle,
                                                       stderr=subprocess.STDOUT, start_new_session=True))

    def tail(self, index: int, chars: int = 3000) -> str:
        return self.logs[index].read_text(errors="replace")[-chars:]

    def wait(self, timeout_s: float = RUN_TIMEOUT_S) -> None:
        """Waits for every process; fails with the logs of any that failed or ran past the timeout."""
        deadline = time.monotonic() + timeout_s
        for index, process in enumerate(self.processes):
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 1))
            except subprocess.TimeoutExpired:
                pytest.fail(f"process {index} still running after {timeout_s} s:\n{self.tail(index)}")
        failed = [index for index, process in enumerate(self.processes) if process.returncode != 0]
        assert not failed, "\n".join(f"process {i} exited {self.processes[i].returncode}:\n{self.tail(i)}"
                                     for i in failed)

    def kill_all(self) -> None:
        """SIGKILL to every process group still alive (the process and its codec sidecar)."""
        for process in self.processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def cluster(workdir: Path, inputs: Inputs, num_processes: int, logs: Path) -> Iterator[Cluster]:
    running = Cluster(workdir, inputs, num_processes, logs)
    try:
        yield running
    finally:
        running.kill_all()


def merge_cli(workdir: Path, inputs: Inputs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "launch.evaluate", "--merge", f"--workdir={workdir}"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, env=inputs.env)


def comparable(records: list[results.ResultRecord]) -> dict[TaskKey, dict]:
    """Records by key without what legitimately differs between runs: timings, answer sharing, writer."""
    out = {}
    for record in records:
        data = json.loads(record.to_json())
        for name in ("seconds", "reused", "process_index"):
            data.pop(name)
        out[record.key] = data
    return out


def assert_merged_equal(workdir: Path, reference: Path, inputs: Inputs) -> None:
    merged = merge_cli(workdir, inputs)
    assert merged.returncode == 0, merged.stderr[-3000:]
    assert (workdir / "summary.csv").read_text() == (reference / "summary.csv").read_text()
    assert comparable(results.read_workdir(workdir)) == comparable(results.read_workdir(reference))


def complete_lines(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8") if path.is_file() else ""
    return text.splitlines(keepends=True)[: text.count("\n")]


@pytest.fixture(scope="module")
def reference(inputs, tmp_path_factory) -> Path:
    """The single-process run of the same config (it merges by itself)."""
    workdir = tmp_path_factory.mktemp("single")
    run = subprocess.run(evaluate_command(workdir, inputs), cwd=REPO_ROOT, capture_output=True, text=True,
                         timeout=RUN_TIMEOUT_S, env=inputs.env)
    assert run.returncode == 0, run.stderr[-3000:]
    records = results.read_workdir(workdir)
    assert len(records) == NUM_SAMPLES * RECORDS_PER_SAMPLE and all(record.ok for record in records)
    assert [m.name for m in distributed.read_manifests(workdir)] == ["shard.0-of-1.json"]
    return workdir


def sweep_config(inputs: Inputs):
    """The in-process config of `evaluate_command` (the same fingerprint)."""
    from configs import synthetic_tiny

    config = synthetic_tiny.get_config("local")
    config.dataset.root = str(inputs.split_dir)
    config.model.checkpoint_dir = str(inputs.model_dir)
    config.seeds = (0,)
    config.scoring.buckets_seconds = (5,)
    config.scoring.batch_size = 2
    config.scoring.max_new_tokens = 3
    config.scoring.occlusion_chunk = 128
    config.runtime.batch_samples = 2
    return config


# --- without processes ---------------------------------------------------------------------------


def test_shards_depend_on_the_sample_id_only(split_dir):
    samples = synthetic.read_split(split_dir)
    shuffled = random.Random(0).sample(samples, len(samples))
    for count in (1, 2, 4):
        shards = [sweep.shard_samples(samples, i, count) for i in range(count)]
        ids = [s.sample_id for shard in shards for s in shard]
        assert sorted(ids) == sorted(s.sample_id for s in samples) and len(set(ids)) == len(ids)
        for index, shard in enumerate(shards):
            moved = sweep.shard_samples(shuffled, index, count)
            assert {s.sample_id for s in moved} == {s.sample_id for s in shard}
            assert all(distributed.shard_of(s.sample_id, count) == index for s in shard)
        # removing a sample moves no other sample
        assert sweep.shard_samples(samples[1:], 0, count) == [s for s in shards[0] if s is not samples[0]]
    with pytest.raises(ValueError, match="must lie in"):
        sweep.shard_samples(samples, 2, 2)


def test_coordinator_settings_come_from_the_config_or_the_environment():
    from configs import common

    runtime = common.base_config().runtime
    assert distributed.coordinator_arguments(runtime) is None
    runtime.distributed = True
    assert distributed.coordinator_arguments(runtime) == {  # a TPU pod
        "initialization_timeout": 300, "heartbeat_timeout_seconds": 100}
    runtime.coordinator_address, runtime.num_processes, runtime.process_id = "10.0.0.1:1234", 2, 1
    assert distributed.coordinator_arguments(runtime) == {
        "coordinator_address": "10.0.0.1:1234", "coordinator_bind_address": "10.0.0.1:1234",  # not every interface
        "num_processes": 2, "process_id": 1, "initialization_timeout": 300, "heartbeat_timeout_seconds": 100}
    runtime.coordinator_bind_address = "0.0.0.0:1234"  # every interface: only when asked for
    assert distributed.coordinator_arguments(runtime)["coordinator_bind_address"] == "0.0.0.0:1234"
    runtime.coordinator_bind_address = "1234"
    with pytest.raises(ValueError, match="coordinator_bind_address must be host:port"):
        distributed.coordinator_arguments(runtime)
    runtime.coordinator_bind_address = ""
    runtime.process_id = 2
    with pytest.raises(ValueError, match=r"process_id must lie in \[0, num_processes=2\)"):
        distributed.coordinator_arguments(runtime)
    runtime.process_id, runtime.distributed = 1, False
    with pytest.raises(ValueError, match="runtime.distributed is False"):
        distributed.coordinator_arguments(runtime)


REACHABILITY = """
import fcntl, json, socket, struct, sys
import ml_collections
from agac_jax.eval import distributed

def host_addresses():
    found = {"127.0.0.2"}  # another loopback address: reachable only by a listener on every interface
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
            except OSError:
                continue
            found.add(socket.inet_ntoa(packed[20:24]))
    return sorted(found - {"127.0.0.1"}) + (["::1"] if socket.has_ipv6 else [])

def reachable(host, port):
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False

port = int(sys.argv[1])
runtime = ml_collections.ConfigDict(dict(distributed=True, coordinator_address=f"127.0.0.1:{port}", num_processes=1,
                                         process_id=0, coordinator_bind_address="", initialization_timeout_s=60))
distributed.initialize(runtime)
print(json.dumps({host: reachable(host, port) for host in ["127.0.0.1", *host_addresses()]}))
"""


def test_a_loopback_coordinator_is_not_reachable_on_the_hosts_other_addresses():
    """JAX's default bind is every interface ([::]:PORT); ours is the coordinator address itself."""
    port = free_port()
    run = subprocess.run([sys.executable, "-c", REACHABILITY, str(port)], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=RUN_TIMEOUT_S, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert run.returncode == 0, run.stderr[-3000:]
    reached = json.loads(run.stdout.strip().splitlines()[-1])
    assert reached.pop("127.0.0.1") is True and len(reached) >= 2
    assert not any(reached.values()), reached


def test_shard_problems_name_each_missing_or_incomplete_shard(tmp_path):
    ids = [f"s{i}" for i in range(20)]
    by_shard = [[s for s in ids if distributed.shard_of(s, 3) == i] for i in range(3)]
    assert distributed.shard_problems(tmp_path, ids) == []  # no manifests: a workdir from before them
    distributed.write_manifest(tmp_path, ShardManifest(0, 3, len(by_shard[0]) * 2, 0, complete=True))
    distributed.write_manifest(tmp_path, ShardManifest(2, 3, len(by_shard[2]), len(by_shard[2]), complete=False))
    distributed.write_manifest(tmp_path, ShardManifest(1, 2, 5, 0, complete=True))  # of an earlier 2-process run
    problems = distributed.shard_problems(tmp_path, by_shard[0] + by_shard[2][:1])
    assert len(problems) == 4, problems
    assert problems[0].startswith(f"shard 0 of 3 is marked complete by host {socket.gethostname()} but only "
                                  f"{len(by_shard[0])} of its {2 * len(by_shard[0])} records")
    assert problems[1].startswith("shard 1 of 3 is missing (no shard.1-of-3.json")
    assert problems[2].startswith(f"shard 2 of 3 is incomplete: 1 of its {len(by_shard[2])} records are written")
    assert problems[3].startswith("shard.1-of-2.json is from a 2-process run while this one has 3 processes")
    with pytest.raises(IncompleteShardsError, match="shard 1 of 3 is missing"):
        distributed.check_shards(tmp_path, ids)
    assert distributed.check_shards(tmp_path, ids, allow_partial=True) == distributed.shard_problems(tmp_path, ids)
    assert [m.name for m in distributed.remove_stale_manifests(tmp_path, 3)] == ["shard.1-of-2.json"]
    assert sorted(p.name for p in tmp_path.glob("shard.*")) == ["shard.0-of-3.json", "shard.2-of-3.json"]


def test_a_coordinator_name_that_resolves_to_loopback_only_is_refused(monkeypatch):
    """Debian's /etc/hosts maps the host's own name to 127.0.1.1: bound there, no other host connects."""
    resolved = {"node0": "127.0.1.1", "node1": "10.0.0.2"}
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args, **kwargs: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", (resolved[host], 1234))])
    for fine in ("localhost:1234", "127.0.0.1:1234", "10.0.0.1:1234", "[::1]:1234", "node1:1234"):
        distributed.check_bind_host(fine)
    with pytest.raises(ValueError, match=r"node0 resolves to \['127.0.1.1'\] on this host, loopback addresses"):
        distributed.check_bind_host("node0:1234")


def test_lost_shards_name_each_process_that_did_not_finish(tmp_path):
    distributed.write_manifest(tmp_path, ShardManifest(0, 3, 4, 4, complete=False))  # process 0 asks while running
    distributed.write_manifest(tmp_path, ShardManifest(1, 3, 6, 6, complete=False, host="h1", pid=7))
    assert distributed.lost_shards(tmp_path, 3) == [
        "process 1 of 3 (host h1, pid 7) stopped before finishing its shard: 0 of its 6 records are written",
        "process 2 of 3 never started its shard (no shard.2-of-3.json)"]
    distributed.write_manifest(tmp_path, ShardManifest(1, 3, 6, 0, complete=True))
    distributed.write_manifest(tmp_path, ShardManifest(2, 3, 2, 0, complete=True))
    assert distributed.lost_shards(tmp_path, 3) == []


# --- real processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_four_processes_merge_to_the_single_process_run(reference, inputs, tmp_path):
    workdir = tmp_path / "four"
    with cluster(workdir, inputs, 4, tmp_path) as running:
        running.wait()
    manifests = distributed.read_manifests(workdir)
    assert [(m.process_index, m.process_count, m.complete) for m in manifests] == [(i, 4, True) for i in range(4)]
    assert sum(m.planned for m in manifests) == sum(m.written for m in manifests) == NUM_SAMPLES * RECORDS_PER_SAMPLE
    for manifest in manifests:
        written = results.read_records(workdir / f"results.{manifest.process_index}.jsonl")
        assert len(written) == manifest.planned
        assert {distributed.shard_of(r.sample_id, 4) for r in written} <= {manifest.process_index}
    assert not (workdir / "summary.csv").exists()  # several processes: nobody merges by itself

    aside = workdir / "shard.3-of-4.json"
    aside.rename(tmp_path / aside.name)
    with pytest.raises(IncompleteShardsError, match=r"shard 3 of 4 is missing \(no shard.3-of-4.json"):
        sweep.merge(workdir)
    (tmp_path / aside.name).rename(aside)
    assert_merged_equal(workdir, reference, inputs)

    # Resumed with two processes: re-sharded by key, nothing left to do, the 4-process manifests gone.
    config = sweep_config(inputs)
    outcome = sweep.run_sweep(config, workdir, process_index=0, process_count=2)
    assert outcome.pending_before == outcome.written == 0
    assert [m.name for m in distributed.read_manifests(workdir)] == ["shard.0-of-2.json"]
    with pytest.raises(IncompleteShardsError, match="shard 1 of 2 is missing"):
        sweep.merge(workdir)
    assert sweep.run_sweep(config, workdir, process_index=1, process_count=2).pending_before == 0
    merged = results.read_workdir(workdir)
    assert distributed.shard_problems(workdir, [record.sample_id for record in merged]) == []
    assert comparable(merged) == comparable(results.read_workdir(reference))


@pytest.mark.slow
def test_a_lost_process_leaves_the_others_to_finish_and_a_rerun_of_all_resumes_its_shard(reference, inputs, tmp_path):
    """Process 1 is killed mid-run: process 0 finishes its own shard and ends with one line naming shard
    1 (exit code 1, no C++ stack); every process rerun with the same ids redoes only the lost records."""
    workdir = tmp_path / "two"
    shard_file = workdir / "results.1.jsonl"
    with cluster(workdir, inputs, 2, tmp_path) as running:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not complete_lines(shard_file):
            assert running.processes[1].poll() is None, f"process 1 ended before writing:\n{running.tail(1)}"
            assert time.monotonic() < deadline, f"process 1 wrote nothing in {RUN_TIMEOUT_S} s:\n{running.tail(1)}"
            time.sleep(0.05)
        assert running.processes[1].poll() is None, "process 1 finished before it could be killed"
        os.kill(running.processes[1].pid, signal.SIGKILL)
        running.processes[1].wait()
        kept = complete_lines(shard_file)
        running.processes[0].wait(timeout=RUN_TIMEOUT_S)
        survivor = running.tail(0, chars=1_000_000)
    (planned_1,) = [m.planned for m in distributed.read_manifests(workdir) if m.process_index == 1]
    assert 0 < len(kept) < planned_1
    assert [(m.process_index, m.complete) for m in distributed.read_manifests(workdir)] == [(0, True), (1, False)]
    assert running.processes[0].returncode == 1, survivor[-3000:]
    [line] = [line for line in survivor.splitlines() if line.startswith(("incomplete:", "error:"))]
    assert line == (f"incomplete: process 1 of 2 (host {socket.gethostname()}, pid {running.processes[1].pid}) "
                    f"stopped before finishing its shard: {len(kept)} of its {planned_1} records are written; process 0 "
                    "finished its own shard. Rerun every process with the same ids to finish the run: each redoes "
                    "only its missing records")
    assert "Terminating process" not in survivor and "Check failure" not in survivor

    refused = merge_cli(workdir, inputs)
    assert refused.returncode != 0
    assert f"shard 1 of 2 is incomplete: {len(kept)} of its {planned_1} records are written" in refused.stderr
    assert not (workdir / "summary.csv").exists()

    with cluster(workdir, inputs, 2, tmp_path) as running:
        running.wait()
    manifest_1 = [m for m in distributed.read_manifests(workdir) if m.process_index == 1][0]
    assert manifest_1.complete and manifest_1.planned == planned_1
    assert manifest_1.pending_before == manifest_1.written == planned_1 - len(kept)  # nothing redone
    lines = complete_lines(shard_file)
    assert lines[: len(kept)] == kept  # nothing lost
    keys = [results.ResultRecord.from_dict(json.loads(line)).key for line in lines]
    assert len(keys) == len(set(keys)) == planned_1
    sweep.merge(workdir)  # as `--merge` (the CLI's merge is run by the test above)
    assert (workdir / "summary.csv").read_text() == (reference / "summary.csv").read_text()
    assert comparable(results.read_workdir(workdir)) == comparable(results.read_workdir(reference))
