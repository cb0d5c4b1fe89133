"""The test-time compute demo: accuracy against compute for every search method and recurrence depth.

    python -m evaluation.search.demo --run runs/ttc/model --heldout runs/ttc/data/heldout.jsonl --out runs/ttc

`make ttc-demo` builds the step-by-step sums (`python -m data_io.demo --task steps`), trains the
tiny HRM on them briefly (config/cfg_ttc_demo.yaml), or reuses both, and runs this. On the first
--problems held-out sums, with the programmatic step verifier (data_io.demo.check_step):
  - greedy decoding, and greedy at H_cycles 1..4 (arch_override): the recurrence-depth axis;
  - majority, best_of_n, weighted_best_of_n, beam and dvts (beam width --width) at each budget N;
  - compute-optimal selection per difficulty bin, from oracle and from verifier-estimated pass
    rates of --difficulty-samples samples per problem (their compute is not charged).
A problem counts as solved when its answer line states the right total. Writes OUT/results.json:
{method: {budget: {"accuracy", "tokens", "flops", "verifier_calls"}}}, tokens and FLOPs per
problem (the depth axis is the method "greedy_by_H_cycles", its budgets the H_cycles; the
compute-optimal ones add their per-bin "choice"), and OUT/accuracy.png.
"""

import argparse
import json
import time
from pathlib import Path

from tqdm import tqdm

from data_io import DataError
from data_io.demo import STEP_CONDITION, check_step
from evaluation.search.compute_optimal import ProblemResult, compute_optimal, difficulty_bins
from evaluation.search.methods import SearchConfig, search
from evaluation.search.policy import EnginePolicy
from evaluation.search.verifiers import AGGREGATIONS, ProgrammaticVerifier, aggregate, split_steps
from simple_inference_engine import SimpleEngine, positive_int, read_heldout
from training.checkpoint import CheckpointError
from training.run_dir import RunDirError

SEARCH_METHODS = ("majority", "best_of_n", "weighted_best_of_n", "beam", "dvts")
DEPTHS = (1, 2, 3, 4)


def final_answer(text: str) -> int | None:
    """The total on the solution's `answer N` line, None without one."""
    lines = text.strip().split("\n")
    words = lines[-1].split() if lines else []
    if len(words) == 2 and words[0] == "answer" and words[1].isdigit():
        return int(words[1])
    return None


class ReusedSamples:
    """A policy wrapper that answers a request list it has seen with the same seed from memory: the
    engine is deterministic for a given call, so majority, best-of-N and weighted best-of-N at one
    budget (and the first round of beam and DVTS) share their samples. Each method is still charged
    the compute of generating them."""

    def __init__(self, policy):
        self.policy = policy
        self.memory = {}

    def complete(self, requests, temperature, max_new_tokens, step_delimiter, seed):
        key = (tuple(requests), temperature, tuple(max_new_tokens), step_delimiter, seed)
        if key not in self.memory:
            self.memory[key] = self.policy.complete(requests, temperature, max_new_tokens, step_delimiter, seed)
        return self.memory[key]

    def flops(self, prompt_tokens, new_tokens):
        return self.policy.flops(prompt_tokens, new_tokens)


def summarize(results: list[ProblemResult]) -> dict:
    n = len(results)
    return {"accuracy": sum(r.correct for r in results) / n, "tokens": sum(r.tokens for r in results) / n,
            "flops": sum(r.flops for r in results) / n}


def run_method(policy, verifier, problems, gold, cfg: SearchConfig) -> tuple[list[ProblemResult], int]:
    outcomes = search(policy, verifier, problems, cfg, lambda i, text: final_answer(text))
    results = [ProblemResult(o.answer == g, o.compute.tokens, o.compute.flops) for o, g in zip(outcomes, gold)]
    return results, sum(o.compute.verifier_calls for o in outcomes)


def difficulties(policy, verifier, problems, gold, cfg: SearchConfig) -> tuple[list[float], list[float]]:
    """(oracle pass rate, mean aggregated verifier score) per problem over cfg.n samples."""
    requests = [(p, "") for p in problems for _ in range(cfg.n)]
    completions = policy.complete(requests, cfg.temperature, [cfg.max_new_tokens] * len(requests), None, cfg.seed)
    oracle, estimated = [], []
    for i, (problem, answer) in enumerate(zip(problems, gold)):
        texts = [c.text for c in completions[i * cfg.n:(i + 1) * cfg.n]]
        oracle.append(sum(final_answer(t) == answer for t in texts) / cfg.n)
        scores = verifier.score(problem, [split_steps(t, cfg.step_delimiter) for t in texts])
        estimated.append(sum(aggregate(s, cfg.aggregation) for s in scores) / cfg.n)
    return oracle, estimated


def print_table(table: dict, budgets: list[int]) -> None:
    header = f"{'method':<22}" + "".join(f"{'N=' + str(b):>24}" for b in budgets)
    print("\naccuracy (generated tokens / GFLOPs per problem)\n" + header)
    for method, by_budget in table.items():
        cells = []
        for b in budgets:
            r = by_budget.get(str(b))
            cells.append(f"{r['accuracy']:6.1%} ({r['tokens']:6.1f} / {r['flops'] / 1e9:6.3f})" if r else "")
        print(f"{method:<22}" + "".join(f"{c:>24}" for c in cells))


def plot(table: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "tokens", "generated tokens per problem"),
                           (axes[1], "flops", "executed FLOPs per problem")):
        for method, by_budget in table.items():
            points = sorted((r[key], r["accuracy"]) for r in by_budget.values())
            style = "s--" if method == "greedy_by_H_cycles" else ("*" if method == "greedy" else "o-")
            ax.plot([x for x, _ in points], [y for _, y in points], style, label=method, markersize=8 if method == "greedy" else 5)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("exact accuracy")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="lower right")
    fig.suptitle("Test-time compute on step-by-step sums: search methods (N = budget) and recurrence depth")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _budgets(value: str) -> list[int]:
    try:
        return [positive_int(b) for b in value.split(",")]
    except argparse.ArgumentTypeError as err:
        raise argparse.ArgumentTypeError(f"{err}; give a comma list of whole numbers >= 1, e.g. 1,4,16") from None


def _non_negative(value: str) -> float:
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"{number} must be >= 0")
    return number


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m evaluation.search.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="run directory of the model trained on the step-by-step sums")
    parser.add_argument("--heldout", required=True, help="held-out rows (JSONL: instruction, response)")
    parser.add_argument("--out", default="runs/ttc", help="folder for results.json and accuracy.png (default %(default)s)")
    parser.add_argument("--problems", type=positive_int, default=100,
                        help="held-out problems evaluated (default %(default)s)")
    parser.add_argument("--budgets", type=_budgets, default="1,4,16,64", help="comma list of N (default %(default)s)")
    parser.add_argument("--width", type=positive_int, default=4, help="beam width M of beam and dvts (default %(default)s)")
    parser.add_argument("--temperature", type=_non_negative, default=1.0,
                        help="sampling temperature (default %(default)s)")
    parser.add_argument("--aggregation", choices=AGGREGATIONS, default="min",
                        help="step scores -> response score (default %(default)s)")
    parser.add_argument("--difficulty-samples", type=positive_int, default=16,
                        help="samples per problem for its pass rate (default %(default)s)")
    parser.add_argument("--bins", type=positive_int, default=4, help="difficulty bins (default %(default)s)")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="sequences decoded at once (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default %(default)s)")
    args = parser.parse_args(argv)

    try:
        rows = read_heldout(args.heldout)[:args.problems]
        for where, row in rows:
            if final_answer(row["response"]) is None:
                raise DataError(f"{where}: field 'response' does not end in an `answer N` line; expected rows of "
                                "`python -m data_io.demo --task steps`")
        engine = SimpleEngine.from_checkpoint(args.run, device="cpu")
        engine.condition_names(STEP_CONDITION, f"--run {args.run} (not a model of `make ttc-demo`?)")
    except (CheckpointError, RunDirError, DataError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    problems = [row["instruction"] for _, row in rows]
    gold = [final_answer(row["response"]) for _, row in rows]
    budgets = args.budgets
    verifier = ProgrammaticVerifier(check_step)
    base = dict(temperature=args.temperature, max_new_tokens=48, max_steps=6, aggregation=args.aggregation,
                width=args.width, seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    table: dict[str, dict[str, dict]] = {}
    per_problem: dict[str, dict[str, list[ProblemResult]]] = {}
    policy = ReusedSamples(EnginePolicy(engine, STEP_CONDITION, args.batch_size))
    jobs = [("greedy", 1)] + [(m, n) for m in SEARCH_METHODS for n in budgets]
    for method, n in tqdm(jobs, desc="search", unit="run"):
        start = time.time()
        results, calls = run_method(policy, verifier, problems, gold, SearchConfig(method=method, n=n, **base))
        table.setdefault(method, {})[str(n)] = {**summarize(results), "verifier_calls": calls / len(problems)}
        if method != "greedy":
            per_problem.setdefault(method, {})[str(n)] = results
        tqdm.write(f"{method:>18} N={n:<3} accuracy {table[method][str(n)]['accuracy']:6.1%} "
                   f"({time.time() - start:.0f} s)")

    for depth in tqdm(DEPTHS, desc="H_cycles", unit="depth"):
        deeper = EnginePolicy(SimpleEngine.from_checkpoint(args.run, arch_override={"H_cycles": depth}, device="cpu"),
                              STEP_CONDITION, args.batch_size)
        results, _ = run_method(deeper, verifier, problems, gold, SearchConfig(method="greedy", **base))
        table.setdefault("greedy_by_H_cycles", {})[str(depth)] = {**summarize(results), "verifier_calls": 0}

    oracle, estimated = difficulties(policy, verifier, problems, gold,
                                     SearchConfig(n=args.difficulty_samples, **base))
    for name, difficulty in (("compute_optimal_oracle", oracle), ("compute_optimal_verifier", estimated)):
        table[name] = compute_optimal(per_problem, difficulty_bins(difficulty, args.bins))

    (out / "results.json").write_text(json.dumps(table, indent=2))
    plot(table, out / "accuracy.png")
    print_table({m: r for m, r in table.items() if m != "greedy_by_H_cycles"}, budgets)
    print("\nrecurrence depth (greedy): " + ", ".join(
        f"H_cycles={d} {r['accuracy']:.1%} ({r['flops'] / 1e9:.3f} GFLOPs)" for d, r in table["greedy_by_H_cycles"].items()))
    for name in ("compute_optimal_oracle", "compute_optimal_verifier"):
        print(f"{name} choice per difficulty bin (hardest first): " + "; ".join(
            f"N={n}: {', '.join(r['choice'])}" for n, r in table[name].items()))
    print(f"\nwrote {out / 'results.json'} and {out / 'accuracy.png'}")
    return table


if __name__ == "__main__":
    main()
