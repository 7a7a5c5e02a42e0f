"""Random SemantiCodec weights in the hub's layout, for tests and benchmarks without the real ones.

    .venv-codec/bin/python -m agac_jax.codec.semanticodec_random --out=/tmp/semanticodec_random --rates=100

Runs under the codec environment (``tools/setup_codec_env.sh``): it builds the package's own modules
from its own config (``semanticodec.config.get_config``), randomly initialised with ``--seed``, and
writes their ``state_dict()`` where ``SemantiCodec(...)`` reads them, laid out as the Hugging Face
repository haoheliu/SemantiCodec (see ``semanticodec_backend.weight_files``):

    <out>/semanticodec_tokenrate_<r>/encoder.ckpt     AudioMAEConditionQuantResEncoder.state_dict()
    <out>/semanticodec_tokenrate_<r>/decoder.ckpt     LatentDiffusion.state_dict()
    <out>/codebook_idx/combine_<c>_audioset_dominate/codebook_<v/2>_0.npy   float32 [v/2, 768 * 100/r]

The codebook rows are standard normal; the package's modules keep their own initialisation. Such a
codec encodes and decodes with the real code paths but its audio is noise: it measures cost, not
quality. At r = 100 the files take 2 GB (encoder 322M, decoder 186M parameters) and about 10 s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from agac_jax.codec.semanticodec_backend import (
    DEFAULT_SEMANTIC_VOCAB_SIZE,
    check_semantic_vocab_size,
    codebook_file,
    rate_directory,
)
from agac_jax.codec.base import check_token_rate


def write_random_weights(
    out: Path | str, token_rate: int, semantic_vocab_size: int = DEFAULT_SEMANTIC_VOCAB_SIZE, seed: int = 0
) -> dict[str, int]:
    """Writes one rate's three files under ``out`` (hub layout); returns parameter counts."""
    import torch
    from semanticodec.config import get_config
    from semanticodec.modules.decoder.latent_diffusion.util import instantiate_from_config
    from semanticodec.modules.encoder.encoder import AudioMAEConditionQuantResEncoder

    token_rate = check_token_rate(token_rate)
    semantic_vocab_size = check_semantic_vocab_size(semantic_vocab_size)
    config, _, feature_dim, lstm_layers, _ = get_config(token_rate, semantic_vocab_size, None)
    codebook = codebook_file(out, token_rate, semantic_vocab_size)
    codebook.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    np.save(codebook, rng.standard_normal((semantic_vocab_size // 2, feature_dim), dtype=np.float32))
    torch.manual_seed(seed)
    folder = rate_directory(out, token_rate)
    folder.mkdir(parents=True, exist_ok=True)
    encoder = AudioMAEConditionQuantResEncoder(
        feature_dimension=feature_dim, lstm_layer=lstm_layers, centroid_npy_path=str(codebook)
    )
    torch.save(encoder.state_dict(), folder / "encoder.ckpt")
    counts = {"encoder": sum(p.numel() for p in encoder.parameters())}
    del encoder
    decoder = instantiate_from_config(config["model"])
    torch.save(decoder.state_dict(), folder / "decoder.ckpt")
    counts["decoder"] = sum(p.numel() for p in decoder.parameters())
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="weights_dir to write (hub layout)")
    parser.add_argument("--rates", default="100", help="comma-separated token rates")
    parser.add_argument("--semantic_vocab_size", type=int, default=DEFAULT_SEMANTIC_VOCAB_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    report = {}
    for rate in (int(r) for r in args.rates.split(",")):
        start = time.perf_counter()
        counts = write_random_weights(args.out, rate, args.semantic_vocab_size, args.seed)
        report[rate] = {**counts, "seconds": round(time.perf_counter() - start, 1)}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
