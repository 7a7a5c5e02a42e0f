"""bfloat16 weights and compute against the float32 port on a tiny model: the stated tolerances.

Tolerances (max |difference| / max |float32 value| of the quantity), `BF16_TOLERANCES`:
  - bf16 parameters, float32 compute: the weights' rounding alone (8 bits of mantissa, relative error
    <= 2^-9 per weight), 1e-2 on the logits and the audio embeddings (measured: 4.0e-3, 2.9e-3);
  - bf16 parameters and compute (the 7B setting): activations rounded too, 2.5e-2 (measured: 8.3e-3
    logits, 7.7e-3 audio embeddings).
Measured on this tiny model (2 decoder layers, random weights); each bound is about 2.5x the measure. The
float32 path itself is checked against transformers at 1e-4 (tests/test_model_parity.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from agac_jax.models.qwen2_audio import checkpoints
from agac_jax.models.qwen2_audio.model import Qwen2AudioForConditionalGeneration
from tests.tiny_models import make_hf_checkpoint

BF16_TOLERANCES = {("bfloat16", "float32"): 1e-2, ("bfloat16", "bfloat16"): 2.5e-2}  # (param_dtype, dtype) -> rel


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("hf"), "gqa3_mel80", seed=1)


def _outputs(loaded):
    c = loaded.config
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((1, c.audio.num_mel_bins, 400)).astype(np.float32)
    ids = np.asarray([[1, 2] + [c.audio_token_id] * 100 + [3, 4, 5]])
    model = Qwen2AudioForConditionalGeneration(c)
    variables = {"params": loaded.params}
    # jitted, as the scoring program runs them (an eager pass compiles every primitive at its shape)
    audio, _ = jax.jit(lambda v, *x: model.apply(v, *x, method=model.encode_audio))(variables, feats, np.asarray([400]))
    logits = jax.jit(model.apply)(variables, ids, np.ones_like(ids), feats, np.asarray([400]))
    return np.asarray(audio.astype(jnp.float32)), np.asarray(logits)


@pytest.mark.parametrize("param_dtype,dtype", sorted(BF16_TOLERANCES))
def test_bf16_within_stated_tolerance_of_float32(hf_dir, param_dtype, dtype):
    ref_audio, ref_logits = _outputs(checkpoints.load_hf_directory(hf_dir))
    loaded = checkpoints.load_hf_directory(hf_dir, param_dtype=param_dtype, dtype=dtype)
    audio, logits = _outputs(loaded)
    assert logits.dtype == np.float32  # the logits are float32 whatever the compute dtype
    tol = BF16_TOLERANCES[(param_dtype, dtype)]
    for name, ours, ref in (("audio", audio, ref_audio), ("logits", logits, ref_logits)):
        rel = np.abs(ours - ref).max() / np.abs(ref).max()
        print(f"{param_dtype}/{dtype} {name}: {rel:.2e} (tolerance {tol:g})")
        assert rel <= tol, (name, rel)
        assert rel > 0  # bf16 really was used
