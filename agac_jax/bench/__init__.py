"""Benchmarks of the scoring program against the PyTorch reference (`scoring_bench`, its parts in
`timing`, `program_cost` and `sharding`, shared set-up in `context`, outputs in `report`) and of the
codec pipeline (`pipeline_bench`)."""

from agac_jax.bench.context import BenchConfig
from agac_jax.bench.report import format_table, write_results
from agac_jax.bench.scoring_bench import PARTS, run_benchmark

__all__ = ["PARTS", "BenchConfig", "format_table", "run_benchmark", "write_results"]
