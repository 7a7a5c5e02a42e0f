"""Test session setup: 8 forced CPU devices (for the sharding tests), float32 at highest precision,
XLA:CPU's quickest code generation, and one persistent XLA compilation cache per pytest run.

The suite's programs are tiny and compiled once or twice each, so compiling dominates. Two flags cut
it: LLVM's lowest optimisation level (`--xla_backend_optimization_level=0`: the scoring-program and CLI
tests took 130 s instead of 181 s), and XLA's elemental IR emitter for fusions in place of the MLIR
fusion emitters (`--xla_cpu_use_fusion_emitters=false`: a tiny model's 8 s occlusion program compiles
in 4.6 s instead of 7.3 s). Only code generation changes: XLA's HLO passes (fusion decisions, buffer
assignment, so the temporaries the memory tests read) are the same, and without fast-math LLVM keeps
IEEE float semantics at every level. A run that sets XLA_FLAGS itself keeps its own.

The cache lives in a fresh temporary folder that the pytest controller makes before its xdist workers
start (they, and the `launch.*` subprocesses the tests start, inherit it through the environment) and
removes at the end, so a run never reads a program compiled by an earlier one. Tests in different
files that build the same program (the same tiny model, bucket and spec) then compile it once. The
store of compiled scoring programs (`agac_jax.scoring.executables`) is off in every test unless the
test turns it on; `launch.*` processes the tests start use it beside the cache.
"""

import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
                                   "--xla_cpu_use_fusion_emitters=false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
_CACHE_VARIABLE = "JAX_COMPILATION_CACHE_DIR"
_OWN_CACHE = None
if _CACHE_VARIABLE not in os.environ:  # the controller (or a run without xdist): make it
    _OWN_CACHE = tempfile.mkdtemp(prefix="agac_test_xla_cache_")
    os.environ[_CACHE_VARIABLE] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402
import pytest  # noqa: E402

from agac_jax.scoring import executables  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture(autouse=True)
def _no_stored_executables():
    """Every test starts with the store of compiled scoring programs off, as library use has it: a
    launch tool's `main` run in-process turns it on (`compile_cache.enable`), and a later test's
    Scorer would then load programs instead of tracing them (which trace counts would see)."""
    executables.disable()
    yield
    executables.disable()


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
