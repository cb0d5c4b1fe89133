"""Compute-optimal selection: the best search method per difficulty bin and budget.

Difficulty is the policy's own: per problem, the fraction of its samples that are right (oracle,
needs the gold answers) or their mean verifier score (verifier-estimated, needs none). Problems
are sorted by it and cut into equal-sized bins, bin 0 the hardest. Per budget and bin, the method
with the best accuracy on that bin's problems is chosen (ties: the method listed first); the
compute-optimal strategy runs each problem with its bin's choice.
"""

from dataclasses import dataclass


@dataclass
class ProblemResult:
    correct: bool
    tokens: int
    flops: float


def difficulty_bins(difficulty: list[float], num_bins: int) -> list[int]:
    """Bin of each problem: by ascending difficulty value (a pass rate: low is hard), in
    `num_bins` groups of equal size (the first ones one larger when it does not divide)."""
    order = sorted(range(len(difficulty)), key=lambda i: (difficulty[i], i))
    bins = [0] * len(difficulty)
    size, extra = divmod(len(order), num_bins)
    start = 0
    for b in range(num_bins):
        end = start + size + (b < extra)
        for i in order[start:end]:
            bins[i] = b
        start = end
    return bins


def compute_optimal(results: dict[str, dict[str, list[ProblemResult]]], bins: list[int]) -> dict[str, dict]:
    """`results[method][budget]`: one ProblemResult per problem. Returns, per budget that every
    method ran, {"accuracy", "tokens", "flops" (means over problems), "choice": method per bin}."""
    methods = list(results)
    budgets = [b for b in results[methods[0]] if all(b in results[m] for m in methods)]
    num_bins = max(bins) + 1
    out = {}
    for budget in budgets:
        choice = []
        for b in range(num_bins):
            members = [i for i, bin_ in enumerate(bins) if bin_ == b]
            accuracy = {m: sum(results[m][budget][i].correct for i in members) for m in methods}
            choice.append(max(methods, key=lambda m: (accuracy[m], -methods.index(m))))
        picked = [results[choice[bins[i]]][budget][i] for i in range(len(bins))]
        n = len(picked)
        out[budget] = {"accuracy": sum(r.correct for r in picked) / n, "tokens": sum(r.tokens for r in picked) / n,
                       "flops": sum(r.flops for r in picked) / n, "choice": choice}
    return out
