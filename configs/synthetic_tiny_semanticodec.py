"""synthetic_tiny's `local` smoke run through the real SemantiCodec (r = 100), in its own environment.

    bash tools/setup_codec_env.sh
    .venv-codec/bin/python -m agac_jax.codec.semanticodec_random --out=/tmp/semanticodec_random --rates=100
    python -m launch.evaluate --config=configs/synthetic_tiny_semanticodec.py --workdir=/tmp/agac_semanticodec \
        --config.codec.options.weights_dir=/tmp/semanticodec_random

The same as `configs/synthetic_tiny.py:local` (2 clips, original/codec/fused/random, rho 1.0 and
0.7, seeds 0 and 1) at r = 100 only, with the codec sidecar under `.venv-codec/bin/python`. With the
random weights of `agac_jax.codec.semanticodec_random` the decoded audio is noise, so this checks
that the sweep runs end to end on the real package and measures its cost, not its quality; with the
hub's weights (`--config.codec.options.weights_dir=<snapshot>`, `semantic_vocab_size` 16384 and
`ddim_sample_step` 50, the package's defaults) it is a real, small run.
"""

from __future__ import annotations

import ml_collections

from configs import synthetic_tiny


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """The `local` variant of synthetic_tiny with the semanticodec backend; `arg` is unused."""
    del arg
    config = synthetic_tiny.get_config("local")
    config.rates = (100,)  # the rate the random weights are written for
    config.codec.backend = "semanticodec"  # the real package, unmodified, in the sidecar
    config.codec.python = ".venv-codec/bin/python"  # made by tools/setup_codec_env.sh
    config.codec.deterministic = False  # diffusion decoding: every seed is its own codec pass
    config.codec.options = ml_collections.ConfigDict()
    config.codec.options.weights_dir = ""  # set on the command line (the hub's layout)
    config.codec.options.semantic_vocab_size = 16384  # the package default, and semanticodec_random's
    config.codec.options.ddim_sample_step = 1  # one DDIM step: cost of the pipeline, not of quality
    config.runtime.codec_num_threads = 2  # the sidecar has the machine's 2 cores while JAX waits
    config.runtime.codec_timeout_s = 1800.0  # a loaded 2-core machine takes minutes per request
    return config
