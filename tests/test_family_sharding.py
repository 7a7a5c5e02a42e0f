"""Every family's parameters shard on the mesh by the same logical axis rules as Qwen2-Audio's: the
attention heads and the MLP on 'model' in whole heads, and every model width also on 'data' under FSDP
(abstract parameters only: nothing is compiled)."""

from __future__ import annotations

from pathlib import Path

import jax
import pytest

from agac_jax import models
from agac_jax.scoring.settings import DEFAULT_AXIS_RULES
from agac_jax.scoring.sharding import fsdp_axis_rules, make_mesh

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
pytestmark = pytest.mark.skipif(len(jax.devices()) < 8, reason="needs 8 devices (tests/conftest.py forces 8 CPUs)")


@pytest.mark.parametrize("config_json", ["tiny_audio_flamingo3_random.json", "tiny_voxtral_random.json"])
def test_heads_and_mlp_split_on_model_and_widths_on_data_under_fsdp(config_json):
    path = CONFIGS / config_json
    adapter = models.entry(models.model_kind(path)).adapter_class().abstract(path, param_dtype="bfloat16")
    mesh = make_mesh((2, 2))
    plain = adapter.param_shardings(mesh, DEFAULT_AXIS_RULES)
    fsdp = adapter.param_shardings(mesh, fsdp_axis_rules(DEFAULT_AXIS_RULES))
    layer = plain["language_model"]["layers_0"]
    assert tuple(layer["self_attn"]["q_proj"]["kernel"].spec) == (None, "model")
    assert tuple(layer["self_attn"]["k_proj"]["kernel"].spec) == (None, "model")  # 2 kv heads on 2 devices
    assert tuple(layer["mlp"]["down_proj"]["kernel"].spec) == ("model", None)
    assert tuple(fsdp["language_model"]["layers_0"]["self_attn"]["o_proj"]["kernel"].spec) == ("model", "data")
    shapes = jax.eval_shape(lambda: adapter.init_params(jax.random.key(0)))
    assert {str(leaf.dtype) for leaf in jax.tree_util.tree_leaves(shapes)} == {"bfloat16"}
