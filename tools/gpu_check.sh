#!/usr/bin/env bash
# The project on a lent GPU in at most 8 minutes, under that machine's own python3 (bench/README.md, "On
# a GPU"): with the device tool, `run` with command `bash tools/gpu_check.sh` and carry [".whl"].
#
#   bash tools/gpu_check.sh                 on the GPU machine: writes $OUT/gpu_check.json and its log
#   bash tools/gpu_check.sh --cpu-dry-run   here: every step at CPU sizes under .venv (tests/test_gpu_check.py)
#   bash tools/gpu_check.sh --fetch-wheels  here: downloads tools/gpu_wheels.txt into .whl/ (and builds semanticodec's)
#
# Steps, each under its own time limit (a step that runs out is recorded as timed out; the JSON is
# always written): the wheels installed with --no-index --no-deps into a scratch site; the device and
# versions; every agac_jax module imported; the GPU tests (bf16, model parity with the generation
# loop, the scoring program) on the GPU while the sharding tests run on 8 forced CPU devices beside
# them; the scoring program's achieved FLOP/s and MFU at the 7B's widths with 2 layers
# (agac_jax/bench/gpu_mfu.py); the SemantiCodec sidecar on cuda:0 with random weights, requests per
# second at r = 100, 50, 25 (agac_jax/bench/gpu_codec.py). Output: $OUT (or --out DIR, default
# /tmp/agac_gpu_check)/gpu_check.json naming the device, and gpu_check.log.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=gpu
OUT_DIR=${OUT:-/tmp/agac_gpu_check}
WHEELS=${WHEELS:-.whl}
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu-dry-run) MODE=dry ;;
    --fetch-wheels) MODE=fetch ;;
    --out) OUT_DIR=$2; shift ;;
    *) echo "gpu_check: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

if [ "$MODE" = fetch ]; then
  set -e
  mkdir -p "$WHEELS"
  grep -q '^/.whl/$' .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  FETCH_PY=${PYTHON:-.venv/bin/python}
  grep -v '^#' tools/gpu_wheels.txt | grep -v '^$' | xargs "$FETCH_PY" -m pip download -q --no-deps --only-binary=:all: \
    --python-version 3.12 --implementation cp $PLATFORMS -d "$WHEELS"
  src=${SEMANTICODEC_SRC:-../shared/third_party/SemantiCodec-inference}
  build=$(mktemp -d)
  cp -r "$src/." "$build/src" && chmod -R u+w "$build/src" && rm -rf "$build/src/build" "$build/src/"*.egg-info
  "$FETCH_PY" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" "$build/src"
  rm -rf "$build"
  ls -l "$WHEELS"
  exit 0
fi

if [ "$MODE" = dry ]; then
  PY=${PYTHON:-.venv/bin/python}
  export JAX_PLATFORMS=cpu
  BUDGET=${GPU_CHECK_BUDGET_S:-1500}
  LIMITS="setup=120 environment=120 imports=180 tests=300 sharding=300 weights=60 mfu=300 codec=200"
else
  PY=${PYTHON:-python3}
  BUDGET=${GPU_CHECK_BUDGET_S:-470}  # the whole run, under the device tool's 10-minute command limit
  LIMITS="setup=30 environment=30 imports=40 tests=150 sharding=150 weights=150 mfu=120 codec=100"
fi
limit() { echo "$LIMITS" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
mkdir -p "$OUT_DIR"
WORK=$(mktemp -d /tmp/agac_gpu_check_work.XXXXXX)
export MODE PY WHEELS PLATFORMS WORK
LOG=$OUT_DIR/gpu_check.log
: > "$LOG"
START=$(date +%s)
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export MPLBACKEND=Agg

# step NAME COMMAND...: runs COMMAND under NAME's limit, cut to what is left of the budget (10 s kept
# for the report), its output appended to the log; records NAME's exit status and seconds in $WORK.
# At the limit the command gets SIGINT (pytest then still writes its report, the benches what they
# measured) and SIGKILL 15 s later: exit 124 or 137. A step with under 15 s left is skipped (exit 125).
step() {
  local name=$1; shift
  local t0=$(date +%s)
  local left=$(( BUDGET - (t0 - START) - 10 ))
  local cap=$(limit "$name")
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 15 ]; then
    echo "=== $name: skipped, $left s of the budget left ===" >> "$LOG"
    echo 125 > "$WORK/$name.rc"; echo 0 > "$WORK/$name.seconds"
    return
  fi
  echo "=== $name (limit $cap s) ===" >> "$LOG"
  if declare -F "$1" > /dev/null; then  # a function of this script: in a child bash that timeout can stop
    timeout -s INT -k 15 "$cap" bash -c "$(declare -f "$1"); $1 \"\$@\"" "$@" >> "$LOG" 2>&1
  else
    timeout -s INT -k 15 "$cap" "$@" >> "$LOG" 2>&1
  fi
  local rc=$?
  echo "$rc" > "$WORK/$name.rc"
  echo $(( $(date +%s) - t0 )) > "$WORK/$name.seconds"
  echo "=== $name: exit $rc after $(cat "$WORK/$name.seconds") s ===" >> "$LOG"
}

install_wheels() {
  local site=$1
  if ! ls "$WHEELS"/*.whl > /dev/null 2>&1; then
    echo "no wheels in $WHEELS (bash tools/gpu_check.sh --fetch-wheels)"
    [ "$MODE" = dry ]  # the dry run uses .venv's packages: the wheels are only checked where they exist
    return
  fi
  if [ "$MODE" = dry ]; then  # the GPU image's python is 3.12: check that the set installs there, use .venv's own
    "$PY" -m pip install -q --no-index --no-deps --no-compile --only-binary=:all: --python-version 3.12 \
      --implementation cp $PLATFORMS --target "$site" "$WHEELS"/*.whl
  else
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
      "$WHEELS"/*.whl
  fi
  ls "$site"
}
SITE=$WORK/site
step setup install_wheels "$SITE"
if [ "$MODE" = gpu ]; then
  export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
fi

environment() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$WORK/nvidia_smi.txt" 2>&1 || true
  "$PY" - "$WORK/environment.json" <<'EOF'
import importlib.metadata as md, json, platform, sys
info = dict(python=sys.version.split()[0], platform=platform.platform(), versions={})
for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "chex", "numpy", "transformers", "torch",
             "torchaudio", "timm", "ml-collections", "soundfile", "soxr", "librosa", "semanticodec"):
    try:
        info["versions"][name] = md.version(name)
    except md.PackageNotFoundError:
        info["versions"][name] = None
import jax
info["jax_devices"] = [dict(id=d.id, platform=d.platform, device_kind=d.device_kind) for d in jax.devices()]
try:
    import torch
    info["torch_cuda"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
except Exception as error:  # noqa: BLE001
    info["torch_cuda"] = f"{type(error).__name__}: {error}"
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
EOF
}
step environment environment

imports() {
  "$PY" - "$WORK/imports.json" <<'EOF'
import importlib, json, pkgutil, sys
import agac_jax
# ImageBind's PyTorch reference needs imagebind-unofficial (the tests' reference only).
optional = {"agac_jax.models.pandagpt.torch_reference"}
failed = {}
names = sorted(m.name for m in pkgutil.walk_packages(agac_jax.__path__, "agac_jax."))
extra = ["configs.common", "launch.evaluate"]  # one launch module: each defines its absl flags
for name in names + extra:
    try:
        importlib.import_module(name)
    except Exception as error:  # noqa: BLE001
        failed[name] = f"{type(error).__name__}: {error}"
json.dump(dict(modules=len(names) + len(extra), failed=failed, optional=sorted(optional)), open(sys.argv[1], "w"), indent=2)
print(json.dumps(failed, indent=2))
sys.exit(1 if set(failed) - optional else 0)
EOF
}
step imports imports

# SemantiCodec's random weights (CPU work) are written while the tests run.
if [ "$MODE" = gpu ]; then
  step weights "$PY" -m agac_jax.codec.semanticodec_random --out="$WORK/semanticodec" --rates=100,50,25 &
  WEIGHTS_PID=$!
fi
# The sharding tests need 8 devices: on 8 forced CPU devices, beside the GPU tests.
if [ "$MODE" = dry ]; then
  SHARDING_TESTS=(-n 0 tests/test_sharding.py -k fsdp_rules)
  GPU_TESTS=(-n 0 tests/test_sharding.py -k fits_nowhere)
else
  SHARDING_TESTS=(-n 2 --dist loadfile tests/test_sharding.py tests/test_scoring_program.py
                  -k "test_sharding or sharded or several_data_shards")
  GPU_TESTS=(-n 3 --dist loadfile tests/test_bf16.py tests/test_model_parity.py tests/test_scoring_program.py)
fi
(
  export JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
  step sharding "$PY" -m pytest -q -p no:cacheprovider --junitxml="$WORK/sharding.xml" "${SHARDING_TESTS[@]}"
) &
SHARDING_PID=$!
step tests "$PY" -m pytest -q -p no:cacheprovider --junitxml="$WORK/tests.xml" "${GPU_TESTS[@]}"
wait "$SHARDING_PID"

if [ "$MODE" = dry ]; then
  step mfu "$PY" -m agac_jax.bench.gpu_mfu --out="$WORK/mfu.json" --spec=micro_random --seconds=2 --repeats=1 \
    --dtype=float32 --estimators=integrated_gradients
  step codec "$PY" -m agac_jax.bench.gpu_codec --out="$WORK/codec.json" --backend=rvq_mel --rates=100 --requests=1 \
    --clip_seconds=2 --num_threads=1
else
  step mfu "$PY" -m agac_jax.bench.gpu_mfu --out="$WORK/mfu.json" --spec=wide_random --seconds=30 --repeats=3
  wait "$WEIGHTS_PID"
  step codec "$PY" -m agac_jax.bench.gpu_codec --out="$WORK/codec.json" --backend=semanticodec --device=cuda:0 \
    --weights_dir="$WORK/semanticodec" --rates=100,50,25 --requests=3 --clip_seconds=10
fi

"$PY" - "$WORK" "$OUT_DIR/gpu_check.json" "$MODE" "$START" "$WHEELS" <<'EOF'
import json, sys, time, xml.etree.ElementTree as ET
from pathlib import Path
work, out, mode, start, wheels = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), Path(sys.argv[5])
def read_json(name):
    path = work / name
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
def junit(name):
    path = work / name
    if not path.exists():
        return None
    counts = dict(tests=0, failures=0, errors=0, skipped=0)
    failed = []
    for suite in ET.parse(path).getroot().iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(f"{case.get('classname')}::{case.get('name')}")
    return dict(counts, passed=counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
                failed=failed)
steps = {}
for rc in sorted(work.glob("*.rc")):
    name = rc.stem
    code = int(rc.read_text())
    steps[name] = dict(exit=code, timed_out=code in (124, 137), seconds=int((work / f"{name}.seconds").read_text()))
environment = read_json("environment.json") or {}
smi = (work / "nvidia_smi.txt").read_text().strip() if (work / "nvidia_smi.txt").exists() else ""
devices = environment.get("jax_devices") or []
record = dict(
    mode=mode,
    device=(smi.splitlines()[0] if smi and "failed" not in smi.lower() and "not found" not in smi.lower()
            else (devices[0]["device_kind"] if devices else "unknown")),
    nvidia_smi=smi, environment=environment, steps=steps, wheels=sorted(p.name for p in wheels.glob("*.whl")),
    imports=read_json("imports.json"),
    tests=junit("tests.xml"), sharding_tests=junit("sharding.xml"), mfu=read_json("mfu.json"),
    codec=read_json("codec.json"), wall_seconds=int(time.time()) - start,
    measured=time.strftime("%Y-%m-%dT%H:%M:%S"))
record["ok"] = all(s["exit"] == 0 for s in steps.values())
out.write_text(json.dumps(record, indent=2, default=str) + "\n")
print(f"gpu_check: {'ok' if record['ok'] else 'FAILED steps: ' + ', '.join(k for k, s in steps.items() if s['exit'])}"
      f" on {record['device']} in {record['wall_seconds']} s; wrote {out}")
EOF
rc=$?
tail -c 20000 "$LOG" | grep -E "^=== |passed|failed|error|MFU|requests/s|gpu_mfu|gpu_codec" | tail -40
rm -rf "$WORK"
exit $rc
