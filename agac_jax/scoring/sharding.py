"""Meshes and parameter shardings from logical axis names, for every model family.

A family names each parameter's dimensions with logical axes (`nn.with_logical_partitioning`); the
rules of `settings.DEFAULT_AXIS_RULES` (or a config's) map them onto the ('data', 'model') mesh, a head
axis only in whole heads (`param_sharding`), and `fsdp_axis_rules` also splits every model width over
'data'.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from agac_jax.scoring.settings import FSDP_AXES, MESH_AXES


def make_mesh(shape: tuple[int, int]) -> Mesh:
    """A ('data', 'model') mesh over this host's first data x model devices (each host scores its own
    shard of the data set, DESIGN.md section 7)."""
    n = shape[0] * shape[1]
    devices = jax.local_devices()
    if n > len(devices):
        raise ValueError(f"mesh {shape} needs {n} devices; {len(devices)} available")
    return Mesh(np.asarray(devices[:n]).reshape(shape), MESH_AXES)


def logical_shardings(init: Callable[[], Any], mesh: Mesh, rules, heads: dict[str, int] | None = None,
                       fsdp: bool = False) -> Any:
    """NamedShardings of the parameters `init()` would return (boxed with logical axis names; traced
    abstractly), from `rules` (`param_sharding` per leaf); `fsdp`: `fsdp_axis_rules(rules)` instead.
    `heads`: logical head axis -> its number of heads, split in whole heads only."""
    boxed = jax.eval_shape(init)
    logical = nn.get_partition_spec(boxed)
    shapes = nn.meta.unbox(boxed)
    rules = fsdp_axis_rules(rules) if fsdp else tuple(tuple(rule) for rule in rules)
    return jax.tree_util.tree_map(lambda names, leaf: param_sharding(names, leaf.shape, mesh, rules, heads or {}),
                                  logical, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def fsdp_axis_rules(rules) -> tuple[tuple[str, str | None], ...]:
    """`rules` with the `FSDP_AXES` (every model width) on 'data' wherever they map to no mesh axis:
    each weight is also split over the data devices and gathered where it is used (FSDP)."""
    return tuple((name, "data") if name in FSDP_AXES and axis is None else (name, axis) for name, axis in rules)


def param_sharding(names: PartitionSpec, shape: tuple[int, ...], mesh: Mesh, rules,
                   heads: dict[str, int]) -> NamedSharding:
    """The NamedSharding of one parameter of `shape` whose dimensions have the logical `names`.

    Each dimension goes on the mesh axis `rules` give its name, if that axis splits it evenly: a
    dimension named in `heads` ([heads * head_dim]) only in whole heads. A mesh axis that cannot split
    its dimension goes to the first other named dimension that no rule placed and that it splits
    (e.g. k_proj [embed, kv_heads * head_dim] with 2 kv heads on 4 devices: split along embed, the
    products summed across the axis), else the weight stays whole along it.
    """
    names = tuple(names) + (None,) * (len(shape) - len(names))
    wanted = list(nn.logical_to_mesh_axes(names, rules))
    spec: list[str | None] = [None] * len(shape)
    homeless = []
    for i, axis in enumerate(wanted):
        if axis is None:
            continue
        if _splits(shape[i], heads.get(names[i]), _axis_size(mesh, axis)):
            spec[i] = axis
        else:
            homeless.append(axis)
    for axis in homeless:
        for i, name in enumerate(names):
            if name is not None and wanted[i] is None and spec[i] is None and \
                    _splits(shape[i], heads.get(name), _axis_size(mesh, axis)):
                spec[i] = axis
                break
    return NamedSharding(mesh, PartitionSpec(*spec))


def _axis_size(mesh: Mesh, axis: str | tuple[str, ...]) -> int:
    """Devices along a mesh axis or a tuple of them."""
    return math.prod(mesh.shape[a] for a in ((axis,) if isinstance(axis, str) else axis))


def _splits(size: int, heads: int | None, devices: int) -> bool:
    """Whether `devices` split a dimension of `size` evenly (in whole heads when it holds `heads`)."""
    return size % devices == 0 and (heads is None or heads % devices == 0)


def divisible(sharding: NamedSharding, shape: tuple[int, ...], mesh: Mesh) -> NamedSharding:
    """Replicates the dimensions a mesh axis does not divide (e.g. a vocabulary of 33 over 2 devices)."""
    spec = [axis if axis is None or shape[i] % mesh.shape[axis] == 0 else None
            for i, axis in enumerate(tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec)))]
    return NamedSharding(mesh, PartitionSpec(*spec))
