"""The codec backends by name, and their options.

- ``rvq_mel``: offline, no download (``agac_jax.codec.rvq_mel``). Options: ``assets_dir``,
  ``griffin_lim_iters`` (32), ``seed`` (Griffin-Lim's initial phase, 0), ``search_width`` (8).
- ``semanticodec``: the real SemantiCodec (``agac_jax.codec.semanticodec_backend``). Options:
  ``weights_dir`` (required), ``semantic_vocab_size``, ``ddim_sample_step``, ``cfg_scale``.

Importing this module imports neither torch nor the backends; ``make_codec`` does, lazily.
"""

from __future__ import annotations

from typing import Any, Mapping

from agac_jax.codec.base import Codec, check_token_rate

BACKEND_OPTIONS: dict[str, frozenset[str]] = {
    "rvq_mel": frozenset({"assets_dir", "griffin_lim_iters", "seed", "search_width"}),
    "semanticodec": frozenset({"weights_dir", "semantic_vocab_size", "ddim_sample_step", "cfg_scale"}),
}
BACKEND_NAMES = tuple(BACKEND_OPTIONS)


def check_options(backend: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The options as a dict; ValueError for an unknown backend or an option it does not take."""
    if backend not in BACKEND_OPTIONS:
        raise ValueError(f"backend must be one of {BACKEND_NAMES}; got {backend!r}.")
    options = dict(options or {})
    unknown = sorted(set(options) - BACKEND_OPTIONS[backend])
    if unknown:
        raise ValueError(
            f"backend_options {unknown} are not options of backend {backend!r}; "
            f"it takes {sorted(BACKEND_OPTIONS[backend])}."
        )
    return options


def check_backend(backend: str, options: Mapping[str, Any] | None = None) -> None:
    """Raises ValueError for bad options and BackendUnavailableError when the backend cannot run."""
    options = check_options(backend, options)
    if backend == "semanticodec":
        from agac_jax.codec import semanticodec_backend

        semanticodec_backend.check_available(
            options.get("weights_dir"),
            semantic_vocab_size=options.get(
                "semantic_vocab_size", semanticodec_backend.DEFAULT_SEMANTIC_VOCAB_SIZE
            ),
        )


def make_codec(backend: str, token_rate: int, options: Mapping[str, Any] | None = None) -> Codec:
    """A loaded codec of ``backend`` at ``token_rate``."""
    options = check_options(backend, options)
    token_rate = check_token_rate(token_rate)
    if backend == "rvq_mel":
        from agac_jax.codec.rvq_mel import RvqMelCodec

        return RvqMelCodec(token_rate, **options)
    from agac_jax.codec.semanticodec_backend import SemantiCodecBackend

    return SemantiCodecBackend(token_rate, **options)
