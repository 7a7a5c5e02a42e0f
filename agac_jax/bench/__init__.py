"""Benchmarks of the scoring program against the PyTorch reference (see `scoring_bench`)."""

from agac_jax.bench.scoring_bench import PARTS, BenchConfig, format_table, run_benchmark, write_results

__all__ = ["PARTS", "BenchConfig", "format_table", "run_benchmark", "write_results"]
