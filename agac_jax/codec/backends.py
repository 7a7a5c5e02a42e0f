"""The codec backends: one ``{name: Backend}`` table. Adding a codec is adding an entry here.

- ``rvq_mel``: offline, no download (``agac_jax.codec.rvq_mel``). Options: ``assets_dir``,
  ``griffin_lim_iters`` (32), ``seed`` (Griffin-Lim's initial phase, 0), ``search_width`` (8).
- ``semanticodec``: the real SemantiCodec (``agac_jax.codec.semanticodec_backend``), run in its own
  environment (``tools/setup_codec_env.sh``, ``codec.python``). Options: ``weights_dir`` (required:
  the hub snapshot), ``semantic_vocab_size`` (16384), ``ddim_sample_step`` (50), ``cfg_scale`` (2.0),
  ``device`` ("cpu"; "cuda:<k>" puts it on GPU k, and the sidecar hides the others from it).

Importing this module imports neither torch nor the backends; ``make_codec`` does, lazily.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

from agac_jax.codec.base import Codec, check_token_rate


def _make_rvq_mel(token_rate: int, options: dict[str, Any]) -> Codec:
    from agac_jax.codec.rvq_mel import RvqMelCodec

    return RvqMelCodec(token_rate, **options)


def _make_semanticodec(token_rate: int, options: dict[str, Any]) -> Codec:
    from agac_jax.codec.semanticodec_backend import SemantiCodecBackend

    return SemantiCodecBackend(token_rate, **options)


def _check_semanticodec(options: dict[str, Any]) -> None:
    from agac_jax.codec import semanticodec_backend as backend

    backend.check_device(options.get("device", "cpu"))
    backend.check_available(
        options.get("weights_dir"),
        semantic_vocab_size=options.get("semantic_vocab_size", backend.DEFAULT_SEMANTIC_VOCAB_SIZE),
    )


@dataclasses.dataclass(frozen=True)
class Backend:
    """A codec backend: the options it takes, how to build one rate's codec, and (optionally) a
    check that raises BackendUnavailableError, before any rate is loaded, when it cannot run here."""

    options: frozenset[str]
    factory: Callable[[int, dict[str, Any]], Codec]
    check: Callable[[dict[str, Any]], None] | None = None


BACKENDS: dict[str, Backend] = {
    "rvq_mel": Backend(frozenset({"assets_dir", "griffin_lim_iters", "seed", "search_width"}), _make_rvq_mel),
    "semanticodec": Backend(
        frozenset({"weights_dir", "semantic_vocab_size", "ddim_sample_step", "cfg_scale", "device"}),
        _make_semanticodec,
        _check_semanticodec,
    ),
}
BACKEND_NAMES = tuple(BACKENDS)


def backend(name: str) -> Backend:
    """The table's entry for ``name``; ValueError naming the known backends otherwise."""
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}; got {name!r}.")
    return BACKENDS[name]


def check_options(name: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options as a dict; ValueError for an unknown backend or an option it does not take."""
    spec = backend(name)
    options = dict(options or {})
    unknown = sorted(set(options) - spec.options)
    if unknown:
        raise ValueError(
            f"backend_options {unknown} are not options of backend {name!r}; it takes {sorted(spec.options)}."
        )
    return options


def check_backend(name: str, options: Mapping[str, Any] | None = None) -> None:
    """Raises ValueError for bad options and BackendUnavailableError when the backend cannot run."""
    options = check_options(name, options)
    spec = backend(name)
    if spec.check is not None:
        spec.check(options)


def make_codec(name: str, token_rate: int, options: Mapping[str, Any] | None = None) -> Codec:
    """A loaded codec of backend ``name`` at ``token_rate``."""
    options = check_options(name, options)
    return backend(name).factory(check_token_rate(token_rate), options)
