"""Benchmark a checkpoint: python -m evaluation.main ckpt_path=... [key=value ...] (--help for the keys)."""

import json
import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from evaluation.benchmarks import BENCHMARKS, get_benchmark, load_items
from evaluation.engines import Engine, build_engine, require_known_condition
from evaluation.scoring import evaluate_generations

DEFAULT_CONFIG = Path(__file__).parent / "config" / "default.yaml"
BENCHMARK_KEYS = {"num_fewshot", "generation_config"}

USAGE = f"""usage: python -m evaluation.main ckpt_path=PATH [key=value ...]

Examples:
  python -m evaluation.main ckpt_path=runs/my_run
  python -m evaluation.main ckpt_path=runs/my_run ckpt_epoch=2 run_only=[GSM8k,MMLU] generation_config.batch_size=16
  python -m evaluation.main ckpt_path=hf_export/ config=evaluation/config/sampling.yaml
  python -m evaluation.main ckpt_path=runs/my_run data_dir=/data/eval limit=100
  python -m evaluation.main ckpt_path=runs/my_run benchmarks.MMLU.num_fewshot=0

Benchmarks: {', '.join(BENCHMARKS)}
Keys (OmegaConf dotlist, defaults from {DEFAULT_CONFIG}):
"""


def _check_keys(where: str, given, allowed) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid: {', '.join(sorted(allowed))}")


def load_config(argv: list[str]) -> tuple[DictConfig, DictConfig]:
    """(config, command-line layer): default.yaml <- optional `config=` file <- command line.

    The command-line layer is kept apart because its generation_config keys override every
    benchmark, above each benchmark's own generation_config.
    """
    cli = OmegaConf.from_dotlist(argv)
    defaults = OmegaConf.load(DEFAULT_CONFIG)
    layers = [defaults]
    if cli.get("config"):
        layers.append(OmegaConf.load(cli.config))
    cfg = OmegaConf.merge(*layers, cli)
    if isinstance(cfg.run_only, str):  # run_only=GSM8k, without brackets
        cfg.run_only = [cfg.run_only]

    _check_keys("the config", cfg.keys(), defaults.keys())
    generation_keys = defaults.generation_config.keys()
    _check_keys("generation_config", cfg.generation_config.keys(), generation_keys)
    _check_keys("benchmarks", cfg.benchmarks.keys(), BENCHMARKS)
    for name, bench in cfg.benchmarks.items():
        _check_keys(f"benchmarks.{name}", bench.keys(), BENCHMARK_KEYS)
        _check_keys(f"benchmarks.{name}.generation_config", bench.get("generation_config", {}).keys(), generation_keys)
    for name in cfg.run_only or []:
        get_benchmark(name)  # fails listing the valid names
    return cfg, cli


def generation_config(cfg: DictConfig, cli: DictConfig, name: str) -> dict:
    merged = OmegaConf.merge(cfg.generation_config, cfg.benchmarks[name].get("generation_config", {}),
                             cli.get("generation_config", {}))
    return OmegaConf.to_container(merged)


def evaluate(cfg: DictConfig, cli: DictConfig, engine: Engine) -> dict[str, dict]:
    names = list(cfg.run_only) if cfg.run_only else list(cfg.benchmarks)
    plans = {name: generation_config(cfg, cli, name) for name in names}
    known = engine.known_conditions()
    for plan in plans.values():  # fail before any data is loaded or generated
        require_known_condition(plan["condition"], known)

    items = {name: load_items(get_benchmark(name), cfg.data_dir, cfg.benchmarks[name].num_fewshot, cfg.limit, cfg.seed)
             for name in names}

    # Benchmarks with identical generation configs share one engine call, so the engine's batches
    # stay full across benchmark boundaries.
    groups: dict[tuple, list[str]] = {}
    for name in names:
        groups.setdefault(tuple(sorted(plans[name].items())), []).append(name)
    generations = {}
    for key, members in groups.items():
        prompts = [item.prompt for name in members for item in items[name]]
        print(f"[eval] {', '.join(members)}: {len(prompts)} prompts, {dict(key)}", flush=True)
        outputs = engine.generate(prompts, **dict(key)) if prompts else []
        if len(outputs) != len(prompts):
            raise RuntimeError(f"engine returned {len(outputs)} results for {len(prompts)} prompts")
        offset = 0
        for name in members:
            generations[name] = outputs[offset:offset + len(items[name])]
            offset += len(items[name])

    results = {}
    for name in names:
        benchmark = get_benchmark(name)
        results[name] = {
            "metrics": evaluate_generations(benchmark, items[name], generations[name]),
            "num_fewshot": cfg.benchmarks[name].num_fewshot,
            "generation_config": plans[name],
            "data": cfg.data_dir or f"{benchmark.source.path} ({benchmark.source.eval_split})",
        }
    return results


def format_table(results: dict[str, dict]) -> str:
    rows = [("benchmark", "metric", "value", "items", "invalid")]
    for name, result in results.items():
        m = result["metrics"]
        for metric, value in m.items():
            if metric.startswith("num_") or metric == "invalid_rate":
                continue
            rows.append((name, metric, f"{value:.4f}", str(m["num_items"]), f"{m['num_invalid']}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def main(argv: list[str] | None = None, engine: Engine | None = None) -> dict:
    """Run the evaluation; `engine` replaces `build_engine(cfg)` (tests, notebooks)."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(USAGE + DEFAULT_CONFIG.read_text())
        return {}
    cfg, cli = load_config(argv)
    engine = engine if engine is not None else build_engine(cfg)
    results = evaluate(cfg, cli, engine)
    report = {
        "ckpt_path": cfg.ckpt_path,
        "ckpt_epoch": cfg.ckpt_epoch,
        "use_ema": cfg.use_ema,
        "results": results,
        "config": OmegaConf.to_container(cfg, resolve=True),
    }
    path = Path(cfg.results_path or Path(cfg.ckpt_path) / "eval_results.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2))
    print(format_table(results))
    print(f"[eval] results written to {path}")
    return report


if __name__ == "__main__":
    main()
