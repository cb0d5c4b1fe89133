"""Benchmark a checkpoint: python -m evaluation.main ckpt_path=... [key=value ...] (--help for the keys)."""

import json
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from data_io.outputs import write_json_atomically
from evaluation.benchmarks import ALIASES, BENCHMARKS, Benchmark, Source, canonical_name
from evaluation.engines import Engine, Generation, build_engine, require_known_condition
from evaluation.search.benchmarks import load_verifier, search_responses
from training.checkpoint import has_trainer_state, read_trainer_state
from training.distributed import set_cpu_threads

DEFAULT_CONFIG = Path(__file__).parent / "config" / "default.yaml"
BENCHMARK_OPTIONS = {  # per-benchmark keys besides generation_config
    "DROP": {"num_shots"}, "MMLU": {"num_shots", "special_shots"}, "ARC": {"num_shots"},
    "HellaSwag": {"num_shots"}, "Winogrande": {"num_shots"}, "BoolQ": {"num_shots"},
    "AIMEMajorityVoting": {"year", "n", "pass_k"},
}

USAGE = f"""usage: python -m evaluation.main ckpt_path=PATH [key=value ...]

Examples:
  python -m evaluation.main ckpt_path=runs/my_run
  python -m evaluation.main ckpt_path=runs/my_run ckpt_epoch=2 run_only=[MATH,DROP,ARC,MMLU] generation_config.batch_size=16
  python -m evaluation.main ckpt_path=runs/my_run data_dir=/data/eval limit=100
  python -m evaluation.main ckpt_path=runs/my_run config=evaluation/config/hrm_maj_vote_benchmarking.yaml
  python -m evaluation.main ckpt_path=hf_export/ generation_config.max_context=4096
  python -m evaluation.main ckpt_path=runs/my_run search=beam search.n=16 search.verifier=prm_dir/

Benchmarks: {', '.join(BENCHMARKS)} (aliases: {', '.join(f'{a}={b}' for a, b in ALIASES.items())})
Keys (OmegaConf dotlist, defaults from {DEFAULT_CONFIG}):
"""


def _check_keys(where: str, given, allowed) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where}; valid: {', '.join(sorted(allowed))}")


def _whole(minimum: int | None = None, nullable: bool = False):
    def check(value) -> bool:
        if value is None:
            return nullable
        return isinstance(value, int) and not isinstance(value, bool) and (minimum is None or value >= minimum)
    return check


def _non_negative(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0


def _stop(value) -> bool:
    return value is None or isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)


# What a value must be, checked before any data or model is read: a word where a number belongs
# would otherwise fail deep inside the run, naming no key.
VALUE_RULES = {
    "ckpt_epoch": ("a whole number >= 1, or null for the latest checkpoint", _whole(1, nullable=True)),
    "use_ema": ("true or false", lambda v: isinstance(v, bool)),
    "limit": ("a whole number >= 1 (rows per benchmark), or null for all", _whole(1, nullable=True)),
    "seed": ("a whole number", _whole()),
}
GENERATION_RULES = {
    "condition": ("condition names as a comma list, e.g. synth,cot", lambda v: isinstance(v, str)),
    "max_context": ("a whole number >= 1 (tokens)", _whole(1)),
    "max_tokens": ("a whole number >= 1, or null for until the context is full", _whole(1, nullable=True)),
    "stop": ("a string, a list of strings, or null", _stop),
    "temperature": ("a number >= 0 (0 is greedy)", _non_negative),
    "num_samples": ("a whole number >= 1", _whole(1)),
    "batch_size": ("a whole number >= 1", _whole(1)),
}
SEARCH_RULES = {
    "n": ("a whole number >= 1", _whole(1)), "width": ("a whole number >= 1", _whole(1)),
    "temperature": ("a number >= 0", _non_negative), "max_steps": ("a whole number >= 1", _whole(1)),
    "seed": ("a whole number", _whole()), "outcome": ("true or false", lambda v: isinstance(v, bool)),
}


def _check_values(prefix: str, section: DictConfig, rules: dict) -> None:
    for key, (what, check) in rules.items():
        if key in section and not check(section[key]):
            raise ValueError(f"{prefix}{key}={section[key]!r}: must be {what}")


def _read_yaml_file(path: str) -> DictConfig:
    file = Path(path)
    if not file.is_file():
        bundled = ", ".join(sorted(p.name for p in DEFAULT_CONFIG.parent.glob("*.yaml")))
        raise ValueError(f"config={path}: no such file; give a YAML file such as evaluation/config/NAME.yaml "
                         f"(bundled: {bundled})")
    try:
        return OmegaConf.load(file)
    except Exception as err:  # yaml and OmegaConf errors: a malformed file
        raise ValueError(f"config={path}: not readable YAML ({str(err).splitlines()[0]})") from None


def _read_command_line(argv: list[str]) -> DictConfig:
    # `search=beam` is short for search.method=beam
    argv = [f"search.method={a[7:]}" if a.startswith("search=") else a for a in argv]
    for arg in argv:  # one at a time, to name the one that cannot be read
        try:
            OmegaConf.from_dotlist([arg])
        except Exception as err:  # yaml and OmegaConf errors: a malformed key=value
            raise ValueError(f"cannot read {arg!r} ({str(err).splitlines()[0]}); write key=value, a list as "
                             "key=[A,B] (quote it in the shell)") from None
    return OmegaConf.from_dotlist(argv)


def load_config(argv: list[str]) -> tuple[DictConfig, DictConfig]:
    """(config, command-line layer): default.yaml <- optional `config=` file <- command line.

    A `config=` file brings its own generation_config (over the defaults' keys) and its own
    benchmarks, as the reference's config files do. The command-line layer is kept apart because
    its generation_config keys override every benchmark.
    """
    cli = _read_command_line(argv)
    defaults = OmegaConf.load(DEFAULT_CONFIG)
    base = defaults
    if cli.get("config"):
        chosen = _read_yaml_file(cli.config)
        base = OmegaConf.merge(defaults, chosen)
        base.benchmarks = chosen.get("benchmarks", {})
    cfg = OmegaConf.merge(base, {k: v for k, v in cli.items() if k != "benchmarks"},
                          {"benchmarks": cli.get("benchmarks", {})})
    if OmegaConf.is_missing(cfg, "ckpt_path"):
        raise ValueError("ckpt_path is missing: give ckpt_path=RUN_DIR (a pretrain.py run) or ckpt_path=HF_DIR "
                         "(a Hugging Face model directory); --help lists the other keys")
    if isinstance(cfg.run_only, str):  # run_only=GSM8k, without brackets
        cfg.run_only = [cfg.run_only]

    _check_keys("the config", cfg.keys(), defaults.keys())
    _check_values("", cfg, VALUE_RULES)
    generation_keys = defaults.generation_config.keys()
    _check_keys("generation_config", cfg.generation_config.keys(), generation_keys)
    _check_values("generation_config.", cfg.generation_config, GENERATION_RULES)
    _check_keys("search", cfg.search.keys(), defaults.search.keys())
    _check_values("search.", cfg.search, SEARCH_RULES)
    renamed = {}
    for name, bench in cfg.benchmarks.items():  # aliases (ARC-C) merge into their benchmark's entry
        canonical = canonical_name(name)
        renamed[canonical] = OmegaConf.merge(renamed.get(canonical, {}), bench)
    cfg.benchmarks = renamed
    for name, bench in cfg.benchmarks.items():
        _check_keys(f"benchmarks.{name}", bench.keys(), {"generation_config"} | BENCHMARK_OPTIONS.get(name, set()))
        _check_keys(f"benchmarks.{name}.generation_config", bench.get("generation_config", {}).keys(), generation_keys)
        _check_values(f"benchmarks.{name}.generation_config.", bench.get("generation_config", {}), GENERATION_RULES)
    if cfg.run_only is not None:
        cfg.run_only = [canonical_name(name) for name in cfg.run_only]  # fails listing the valid names
    return cfg, cli


def benchmark_settings(cfg: DictConfig, name: str) -> tuple[dict, dict]:
    """(benchmark options, its own generation_config) from `benchmarks.<name>`, if listed."""
    entry = OmegaConf.to_container(cfg.benchmarks[name]) if name in cfg.benchmarks else {}
    generation = entry.pop("generation_config", {}) or {}
    return entry, generation


def generation_plan(cfg: DictConfig, cli: DictConfig, benchmark: Benchmark, own: dict) -> dict:
    """defaults <- what the benchmark imposes (MCQ: one token) <- its config <- the command line."""
    plan = OmegaConf.to_container(cfg.generation_config) | benchmark.generation_overrides | own
    plan |= OmegaConf.to_container(cli.get("generation_config", OmegaConf.create({})))
    if plan["max_tokens"] is None:
        plan["max_tokens"] = plan["max_context"]  # the reference: generate until the context is full
    return plan


def cut_at_stop(text: str, stops: str | list[str]) -> str:
    """The text before the first stop string (as vLLM's `stop`; the tokens after it could not
    have changed what came before)."""
    stops = [stops] if isinstance(stops, str) else stops
    at = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    return text if at < 0 else Generation(text[:at], "stop")


def prepare(cfg: DictConfig, cli: DictConfig) -> tuple[dict[str, Benchmark], dict[str, dict]]:
    """(benchmarks with their items, generation plan per benchmark): all data is read and checked
    before any model is loaded."""
    names = list(cfg.run_only) if cfg.run_only else list(cfg.benchmarks)
    benchmarks, plans = {}, {}
    for name in names:
        options, own = benchmark_settings(cfg, name)
        try:
            benchmarks[name] = BENCHMARKS[name](cfg.data_dir, cfg.limit, **options)
        except ConnectionError as err:  # the hub, unreachable (offline, or HF_DATASETS_OFFLINE=1)
            if cfg.data_dir is not None:
                raise
            sources = [s for s in vars(BENCHMARKS[name]).values() if isinstance(s, Source)]
            folder = BENCHMARKS[name].folder
            files = " and ".join(f"DIR/{folder}/{s.split}.jsonl" for s in sources) or f"DIR/{folder}/SPLIT.jsonl"
            raise ValueError(f"{name}: {err}; offline, give data_dir=DIR with {files} (or .parquet) in the hub "
                             f"dataset's schema (tests/fixtures/eval is a small example)") from None
        plans[name] = generation_plan(cfg, cli, benchmarks[name], own)
    return benchmarks, plans


def evaluate(cfg: DictConfig, benchmarks: dict[str, Benchmark], plans: dict[str, dict],
             engine: Engine) -> dict[str, dict]:
    names = list(benchmarks)
    for plan in plans.values():  # fail before anything is generated
        require_known_condition(plan["condition"], engine.known_conditions())
    search_cfg = OmegaConf.to_container(cfg.search)
    verifier = load_verifier(search_cfg) if search_cfg["method"] else None

    # Benchmarks with identical generation configs share one engine call, so the engine's batches
    # stay full across benchmark boundaries.
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(json.dumps(plans[name], sort_keys=True), []).append(name)
    generations = {}
    for key, members in groups.items():
        plan = json.loads(key)
        # The reference's native engine strips each prompt before wrapping it in boq/eoq.
        prompts = [item.prompt.strip() for name in members for item in benchmarks[name].items]
        print(f"[eval] {', '.join(members)}: {len(prompts)} prompts, {plan}", flush=True)
        start = time.perf_counter()
        if cfg.search.method and prompts:
            names_of = [name for name in members for _ in benchmarks[name].items]
            outputs, compute = search_responses(engine, search_cfg, verifier, plan, prompts, names_of)
            print(f"[eval] search={cfg.search.method} n={cfg.search.n}: {compute}", flush=True)
        else:
            outputs = engine.generate(prompts, condition=plan["condition"], max_new_tokens=plan["max_tokens"],
                                      temperature=plan["temperature"], num_samples=plan["num_samples"],
                                      batch_size=plan["batch_size"], seed=cfg.seed,
                                      max_context=plan["max_context"]) if prompts else []
        print(f"[eval] {', '.join(members)}: generated in {time.perf_counter() - start:.1f} s{_peak_gpu_memory()}",
              flush=True)
        if plan["stop"]:
            outputs = [[cut_at_stop(text, plan["stop"]) for text in samples] for samples in outputs]
        if len(outputs) != len(prompts):
            raise RuntimeError(f"engine returned {len(outputs)} results for {len(prompts)} prompts")
        offset = 0
        for name in members:
            count = len(benchmarks[name].items)
            generations[name] = outputs[offset:offset + count]
            offset += count

    results = {}
    for name in names:
        samples = [g for per_item in generations[name] for g in per_item]
        stops = [getattr(g, "stop", None) for g in samples]
        results[name] = {
            "metrics": benchmarks[name].compute_metrics(benchmarks[name].items, generations[name]),
            "num_items": len(benchmarks[name].items),
            "num_overlong": stops.count("overlong"),  # prompts that did not fit: answered ""
            "num_truncated": stops.count("length"),  # responses cut by max_tokens or the context
            "generation_config": plans[name],
            "options": benchmark_settings(cfg, name)[0],
        }
    return results


def _peak_gpu_memory() -> str:
    """', peak GPU memory N GiB' (the most the process has held so far: weights, the engine's KV
    cache and activations), or '' off CUDA."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return ""
    return f", peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB"


def format_table(results: dict[str, dict]) -> str:
    rows = [("benchmark", "metric", "value", "items", "overlong", "truncated")]
    for name, result in results.items():
        for metric, value in result["metrics"].items():
            if metric[0].isdigit() or "_" in metric and metric.split("_")[0] in ("n", "acc", "invalid"):
                continue  # per-problem and per-group entries stay in the JSON
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            rows.append((name, metric, shown, str(result["num_items"]), str(result["num_overlong"]),
                         str(result["num_truncated"])))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


def results_path(cfg: DictConfig) -> Path:
    return Path(cfg.results_path or Path(cfg.ckpt_path) / "eval_results.json")


def read_results(path: Path) -> dict:
    """The benchmarks' entries already in `path` ({} if there is none yet). A file that is not
    a results file is refused rather than overwritten."""
    if not path.exists():
        return {}
    try:
        results = json.loads(path.read_text())["results"]
        if not isinstance(results, dict):
            raise TypeError(f"'results' is a {type(results).__name__}")
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a results file of evaluation.main ({err!r}); move it away or "
                         "give results_path=FILE") from None
    return results


def evaluated_weights(cfg: DictConfig, engine: Engine) -> dict:
    """Which weights produced the results: the checkpoint folder the native engine loaded (its
    name and global step), or the model directory."""
    native = getattr(engine, "engine", engine)  # NativeEngine wraps a SimpleEngine
    checkpoint = getattr(native, "checkpoint", None)  # None: a model directory (or a test's engine)
    if checkpoint is None:
        return {"checkpoint": Path(cfg.ckpt_path).name, "step": None}
    step = read_trainer_state(checkpoint)["step"] if has_trainer_state(checkpoint) else None
    return {"checkpoint": checkpoint.name, "step": step, "use_ema": cfg.use_ema,
            "arch_override": OmegaConf.to_container(cfg.arch_override)}


def write_results(path: Path, cfg: DictConfig, results: dict[str, dict]) -> dict:
    """Merge `results` into the file per benchmark (a benchmark evaluated again replaces its own
    entry; the others stay) and write it atomically: a temporary file renamed over the old one.
    `config` is the latest run's."""
    merged = read_results(path) | results
    report = {"ckpt_path": cfg.ckpt_path, "results": merged, "config": OmegaConf.to_container(cfg, resolve=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomically(path, report, indent=2)
    return report


def main(argv: list[str] | None = None, engine: Engine | None = None, set_threads: bool = False) -> dict:
    """Run the evaluation; `engine` replaces `build_engine(cfg)` (tests, notebooks). `set_threads`:
    the command line's choice of torch's CPU thread count for a native engine on CPU (library
    callers keep their own). Returns the results file's content after this run's merge."""
    argv = sys.argv[1:] if argv is None else argv
    if "--help" in argv or "-h" in argv:
        print(USAGE + DEFAULT_CONFIG.read_text())
        return {}
    cfg, cli = load_config(argv)
    path = results_path(cfg)
    earlier = read_results(path)  # an unreadable file fails now, not after the generation
    benchmarks, plans = prepare(cfg, cli)
    if engine is None:
        try:
            engine = build_engine(cfg)
        except OSError as err:  # Transformers cannot load the model directory (no weights, no tokenizer)
            if not (Path(cfg.ckpt_path) / "config.json").is_file():
                raise
            raise ValueError(f"ckpt_path={cfg.ckpt_path}: {str(err).splitlines()[0].rstrip('.')}; give a complete model "
                             "directory (export a run with python -m conversion.convert_to_hf) or a run "
                             "directory") from None
        native = getattr(engine, "engine", None)  # NativeEngine's SimpleEngine
        if set_threads and native is not None and native.device.type == "cpu":
            set_cpu_threads(native.model.arch.hidden_size)
    results = evaluate(cfg, benchmarks, plans, engine)
    weights = evaluated_weights(cfg, engine)
    search = OmegaConf.to_container(cfg.search) if cfg.search.method else None
    for result in results.values():
        result |= weights | {"limit": cfg.limit, "seed": cfg.seed, "search": search}
    report = write_results(path, cfg, results)
    print(format_table(results))
    kept = sorted(set(earlier) - set(results))
    if kept:
        print(f"[eval] kept earlier results of {', '.join(kept)} in {path}")
    print(f"[eval] results of {', '.join(results)} ({weights['checkpoint']}) written to {path}")
    return report


if __name__ == "__main__":
    try:
        main(set_threads=True)
    except (ValueError, FileNotFoundError) as e:  # bad config, data or path: one line, non-zero exit
        sys.exit(f"error: {e}")
