"""The scoring benchmark's outputs: the results JSON and the plain-text table of each part's headline
numbers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


def write_results(results: dict[str, Any], path: Path | str) -> Path:
    """Writes `run_benchmark`'s results as indented JSON to `path` (parents created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=json_default) + "\n")
    return path


def json_default(value: Any) -> Any:
    """`json.dumps`'s `default` for numpy scalars and arrays, tuples and paths."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (np.ndarray, tuple)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def format_table(results: dict[str, Any]) -> str:
    """A short plain-text table of the headline numbers of each part that ran."""
    m = results["machine"]
    lines = [f"agac-jax scoring benchmark: {m['jax_backend']} ({m['device_kind']}), {m['usable_cpus']} CPUs, "
             f"load {m['load_average'][0]:.1f}, jax {m['jax']}, torch {m['torch']} ({m['torch_threads']} threads)"]
    if m.get("cpu_model"):
        lines.append(f"CPU: {m['cpu_model']} ({', '.join(m.get('cpu_features') or ['no vector extension listed'])})")
    rows: list[tuple[str, str, str]] = []
    parts = results["parts"]
    if "whole" in parts:
        _whole_rows(parts["whole"], rows)
    if "mix" in parts:
        _mix_rows(parts["mix"], rows)
    if "scaling" in parts:
        _scaling_rows(parts["scaling"], rows)
    if "batch" in parts:
        _batch_rows(parts["batch"], rows)
    if "flops" in parts:
        _flops_rows(parts["flops"], rows)
    if "memory" in parts:
        _memory_rows(parts["memory"], rows)
    if "sharding" in parts:
        _sharding_rows(parts["sharding"], rows)
    if "gpu" in parts:
        rows.append(("8 gpu", "", parts["gpu"]["status"]))
    widths = [max(len(r[i]) for r in rows + [("part", "case", "result")]) for i in range(2)]
    lines.append(f"{'part':<{widths[0]}}  {'case':<{widths[1]}}  result")
    lines += [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    lines.append(f"total {results['total_seconds']:.0f} s")
    return "\n".join(lines)


def _whole_rows(part: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    for role, model in part["models"].items():
        name = f"{role}{' (shipped)' if model['shipped'] else ' (random)'}"
        for est, r in model["estimators"].items():
            rows.append((f"1 whole {part['clip_seconds']:.2f}s", f"{name} {_short(est)} B={r['clips']}",
                         f"jax {r['jax_s_per_clip']:.3f} s/clip, torch {_mode(r)} {r['torch_s_per_clip']:.3f} s/clip, "
                         f"torch/jax {r['torch_over_jax']:.2f}x{_other_modes(r)}, compile {r['compile_s']:.1f} s, "
                         f"max diff local {r['max_relative_difference']['local_abs']:.1e} nats "
                         f"({r['max_relative_difference']['local']:.1e} of |logp|)"))
            w = r["work"]
            rows.append(("", "  = work x rate", f"analytic FLOPs torch/jax {w['torch_over_jax']:.2f}x, rate jax "
                         f"{w['jax_gflops_per_s']:.0f} / torch {w['torch_gflops_per_s']:.0f} GFLOP/s"))


def _mix_rows(part: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    n = len(part["clip_seconds"])
    span = f"{min(part['clip_seconds']):.1f}-{max(part['clip_seconds']):.1f}s"
    for role, model in part["models"].items():
        for est, r in model["estimators"].items():
            for name, b in r["bucket_sets"].items():
                keep = b["keep"]
                others = "".join(f" ({mode} {r['torch_s_by_reference'][mode]:.2f} s, {ratio:.2f}x)"
                                 for mode, ratio in b.get("torch_over_jax_by_reference", {}).items()
                                 if mode != _mode(r))
                rows.append((f"2 mix {n} clips {span}", f"{role} {_short(est)} {name} buckets",
                             f"jax {b['jax_s']:.2f} s, torch {_mode(r)} {r['torch_s']:.2f} s, torch/jax "
                             f"{b['torch_over_jax']:.2f}x{others}; {b['compilations']} compiles {b['compile_s']:.0f} s; "
                             f"local diff {b['max_relative_difference']['local']:.1e} of |logp|; keep same "
                             f"{keep['decisive_same']}/{keep['decisive']} decisive ({keep['same']}/{keep['pairs']})"))
                if "bound" in b:
                    rows.append(("", "", _bound_cell(b["bound"])))
            i = r["issue_case"]
            others = "".join(f" ({mode} {t:.2f} s, {t / i['jax_s']:.2f}x)"
                             for mode, t in i.get("torch_s_by_reference", {}).items() if mode != _mode(i))
            rows.append(("", f"{role} {_short(est)} issue clips", f"jax {i['jax_s']:.2f} s, first run "
                         f"{i['first_call_s'] - i['compile_s']:.2f} s, torch {_mode(i)} {i['torch_s']:.2f} s, "
                         f"torch/jax {i['torch_over_jax']:.2f}x{others}, local diff "
                         f"{i['max_relative_difference']['local']:.1e}"))


def _bound_cell(bound: dict[str, Any]) -> str:
    """The ratio's parts: work ratio x rate ratio, and the two kernels' rates where measured."""
    cell = (f"= work {bound['work_ratio']:.2f}x (jax {bound['jax_flops'] / 1e9:.0f}, torch "
            f"{bound['torch_flops'] / 1e9:.0f} GFLOP) x rate {bound['rate_ratio']:.2f}x (jax "
            f"{bound['jax_gflops']:.1f}, torch {bound['torch_gflops']:.1f} GFLOP/s)")
    kernels = bound.get("kernels")
    if kernels:
        cell += "; alone: " + ", ".join(f"{name} jax {kernels[name]['jax_gflops']:.0f} torch "
                                       f"{kernels[name]['torch_gflops']:.0f} GFLOP/s" for name in ("matmuls", "attention"))
    return cell


def _scaling_rows(part: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    for est, r in part["estimators"].items():
        for name, v in r["lengths"].items():
            check = r["checks"][name]
            verdict = ("no full clip" if check["within"] is None else
                       f"{check['over_predicted']:.2f}x of tokens share ({'ok' if check['within'] else 'over'})")
            rows.append(("3 scaling", f"{_short(est)} {name}s (bucket {v['bucket_frames'] // 100}s)",
                         f"jax {v['jax_s']:.3f} s, torch {v['torch_s']:.3f} s, torch/jax {v['torch_over_jax']:.2f}x; "
                         f"{verdict}"))


def _batch_rows(part: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    cells = ", ".join(f"B={b} {v['s_per_clip']:.3f}" for b, v in part["sizes"].items())
    capped = f"; capped at B={part['capped']['at']}" if part["capped"] else ""
    rows.append(("4 batch", "occ s/clip", cells + capped))
    sweep = part["sweep"]
    rows.append(("4 batch", "traces over sweep", f"{sweep['traces_after_second_sweep']} for {sweep['buckets']} buckets "
                 f"(two sweeps)"))


def _flops_rows(part: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    c = part["ceiling"]
    rows.append(("5 flops", f"matmul {c['size']} fp32", f"jax {c['jax_gflops']:.1f} GFLOP/s, "
                                                        f"torch {c['torch_gflops']:.1f} GFLOP/s"))
    for p in part["programs"]:
        rows.append(("5 flops", p["label"], f"{p['analytic_gflops_per_s']:.1f} GFLOP/s analytic "
                     f"({100 * p['fraction_of_ceiling']:.0f}% of ceiling; XLA count {p['xla_gflops_per_s']:.1f}), "
                     f"peak {p['memory']['peak_bytes'] / 2**20:.0f} MiB" + _layer_memory_cell(p)))


def _layer_memory_cell(program: dict[str, Any]) -> str:
    deeper = program["doubled_layers"]
    if deeper is None:
        return ""
    growth = (deeper["temp_bytes"] - program["memory"]["temp_bytes"]) / 2**20
    held = program["attention_maps"]["all_layers_batch_times_chunk"] / 2**20
    return f"; 2x layers: temp {growth:+.0f} MiB (held maps would add {held:.0f} MiB)"


def _memory_rows(part: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    cells = ", ".join(f"chunk {c['chunk']} {c['temp_bytes'] / 2**20:.0f} MiB" for c in part["chunks"].values())
    rows.append(("6 memory", f"occ temps {part['bucket_frames'] // 100}s bucket",
                 cells + f" (one bucket's scores {part['whole_bucket_scores_bytes'] / 2**20:.0f} MiB/layer)"))


def _sharding_rows(part: dict[str, Any], rows: list[tuple[str, str, str]]) -> None:
    for mesh, r in part["meshes"].items():
        diff = max(r["max_abs_difference"].values())
        rows.append(("7 sharding", f"mesh {mesh} of {part['forced_devices']}",
                     f"{r['s_per_clip']:.3f} s/clip, {r['over_one_device']:.2f}x 1 device, max abs diff {diff:.1e}"))


def _mode(case: dict[str, Any]) -> str:
    """The reference mode a case's torch times are of ("eager" for results written before the modes)."""
    return case.get("reference", "eager")


def _other_modes(case: dict[str, Any]) -> str:
    """The `whole` case's ratios against the other reference modes, as " (eager 6.75x)"."""
    return "".join(f" ({mode} {r['torch_over_jax']:.2f}x)" for mode, r in case.get("by_reference", {}).items()
                   if mode != _mode(case))


def _short(estimator: str) -> str:
    return {"occlusion": "occ", "integrated_gradients": "IG"}.get(estimator, estimator)



def plot_scaling(results: dict[str, Any], path: Path | str) -> Path | None:
    """Seconds per clip against clip length, JAX and the reference per estimator (the `scaling` part),
    with the proportional cost of each bucket's full clip dotted; a PNG at `path` (None without the part)."""
    part = results["parts"].get("scaling")
    if part is None:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colors = {"occlusion": "tab:blue", "integrated_gradients": "tab:orange"}
    for est, r in part["estimators"].items():
        lengths = r["lengths"].values()
        x = [v["clip_s"] for v in lengths]
        color = colors.get(est, None)
        ax.plot(x, [v["jax_s"] for v in lengths], "o-", color=color, label=f"JAX {_short(est)}")
        ax.plot(x, [v["torch_s"] for v in lengths], "s--", color=color, alpha=0.6, label=f"PyTorch {_short(est)}")
        predicted = [(v["clip_s"], r["checks"][k]["predicted_s"]) for k, v in r["lengths"].items()
                     if r["checks"][k]["within"] is not None]
        ax.plot([p[0] for p in predicted], [p[1] for p in predicted], ":", color=color, alpha=0.8,
                label=f"JAX {_short(est)}: tokens share of bucket's full cost")
    m = results["machine"]
    ax.set(xlabel="clip length (s)", ylabel="seconds per clip (warm, one clip per call)", yscale="log",
           title=f"Scoring cost against clip length\n{Path(part['model'].split(' (')[0].split()[-1]).name}, "
                 f"{m['usable_cpus']} CPUs, load {m['load_average'][0]:.1f} at the start")
    for seconds in part["buckets"]:
        ax.axvline(seconds, color="grey", lw=0.5, alpha=0.5)
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
