"""Test-time search over a policy: majority vote, best-of-N, weighted best-of-N, beam search, DVTS.

Every method takes a batch of problems and returns, per problem, the chosen solution text, its
answer and the compute it spent. Sampling goes through a `Policy`; methods that rank solutions ask
a `Verifier` (verifiers.py) for step scores and fold them with `SearchConfig.aggregation`.

Definitions (ties always go to the candidate generated first):
  greedy              one solution at temperature 0.
  majority            N samples; the most frequent valid answer (answers compared with
                      `equivalent`); the first sample with it. No valid answer: the first sample.
  best_of_n           N samples; the highest aggregated score.
  weighted_best_of_n  N samples; scores summed over samples with equivalent answers; the answer
                      with the largest sum, and of its samples the highest-scored. No valid
                      answer: best_of_n's pick.
  beam                N beams, beam width M: the first step is sampled N times; each round, the
                      candidates that ended (end of answer or token limit) are set aside as
                      complete, and the N/M best unfinished ones are each expanded M times by one
                      more step. After `max_steps` rounds the unfinished ones count as complete.
                      The answer: the best-scored complete candidate.
  dvts                N/M independent subtrees of width M: each subtree samples M first steps,
                      keeps its best candidate and, while that one is unfinished (and rounds are
                      left), expands it M times by one more step. The answer: the best-scored of
                      the subtrees' final candidates.

Compute (`Compute`): generated tokens, verifier calls (one per solution or partial solution
scored) and the policy's executed FLOPs, `policy.flops(prompt_tokens, new_tokens)` summed over
every generation (a step continuation re-reads its prompt and response prefix). The verifier's
own FLOPs are not included; verifier calls stand for them.
"""

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from evaluation.search.verifiers import AGGREGATIONS, Verifier, aggregate, split_steps

METHODS = ("greedy", "majority", "best_of_n", "weighted_best_of_n", "beam", "dvts")
VERIFIED = ("best_of_n", "weighted_best_of_n", "beam", "dvts")


@dataclass
class Completion:
    text: str  # the generated text (a step continuation ends with the step delimiter)
    num_tokens: int  # generated tokens
    prompt_tokens: int  # tokens read before generating: prompt and response prefix
    finished: bool  # the response ended (end of answer or token limit), not just the step


class Policy(Protocol):
    def complete(self, requests: list[tuple[str, str]], temperature: float, max_new_tokens: list[int],
                 step_delimiter: str | None, seed: int) -> list[Completion]:
        """One completion per (problem, response prefix) request, continuing the prefix by at most
        max_new_tokens[i] tokens; with step_delimiter, it stops after the first delimiter."""
        ...

    def flops(self, prompt_tokens: int, new_tokens: int) -> float:
        """Executed FLOPs of reading prompt_tokens and generating new_tokens after them."""
        ...


@dataclass
class Compute:
    tokens: int = 0
    verifier_calls: int = 0
    flops: float = 0.0

    def add_generation(self, policy: Policy, completion: Completion) -> None:
        self.tokens += completion.num_tokens
        self.flops += policy.flops(completion.prompt_tokens, completion.num_tokens)


@dataclass
class SearchConfig:
    method: str = "best_of_n"
    n: int = 16  # samples, beams (beam) or first-round candidates (dvts)
    width: int = 4  # beam width M (beam, dvts)
    temperature: float = 0.8
    max_new_tokens: int = 512  # per solution, over all of its steps
    max_steps: int = 40  # rounds of beam / dvts
    aggregation: str = "min"
    step_delimiter: str = "\n"
    seed: int = 0

    def __post_init__(self):
        if self.method not in METHODS:
            raise ValueError(f"unknown search method {self.method!r}; choose one of {', '.join(METHODS)}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"unknown aggregation {self.aggregation!r}; choose one of {', '.join(AGGREGATIONS)}")
        if self.n < 1 or self.width < 1 or self.max_steps < 1:
            raise ValueError(f"search needs n, width and max_steps >= 1, got {self.n}, {self.width}, {self.max_steps}")
        if self.method != "greedy" and self.temperature <= 0:
            raise ValueError(f"search method {self.method} samples: it needs temperature > 0")


@dataclass
class SearchOutcome:
    text: str
    answer: Any
    compute: Compute = field(default_factory=Compute)


@dataclass
class _Candidate:
    text: str
    tokens: int  # generated tokens in text
    finished: bool
    score: float = 0.0


def search(policy: Policy, verifier: Verifier | None, problems: list[str], cfg: SearchConfig,
           extract: Callable[[int, str], Any],
           equivalent: Callable[[int, Any, Any], bool] = lambda i, a, b: a == b) -> list[SearchOutcome]:
    """Run `cfg.method` on every problem. `extract(i, text)` is the answer of a solution to
    problem i (None when it has none); `equivalent(i, a, b)` compares two answers to problem i
    (majority and weighted best-of-N)."""
    if cfg.method in VERIFIED and verifier is None:
        raise ValueError(f"search method {cfg.method} ranks solutions: it needs a verifier")
    if cfg.method in ("beam", "dvts"):
        return _tree_search(policy, verifier, problems, cfg, extract)
    n = 1 if cfg.method == "greedy" else cfg.n
    temperature = 0.0 if cfg.method == "greedy" else cfg.temperature
    requests = [(p, "") for p in problems for _ in range(n)]
    completions = policy.complete(requests, temperature, [cfg.max_new_tokens] * len(requests), None, cfg.seed)
    outcomes = []
    for i, problem in enumerate(problems):
        samples = completions[i * n:(i + 1) * n]
        compute = Compute()
        for c in samples:
            compute.add_generation(policy, c)
        texts = [c.text for c in samples]
        answers = [extract(i, t) for t in texts]
        same = lambda a, b: equivalent(i, a, b)
        if cfg.method in ("greedy", "majority"):
            chosen = _majority(answers, same)
        else:
            scores = _scores(verifier, problem, texts, cfg)
            compute.verifier_calls += len(texts)
            chosen = _best(scores) if cfg.method == "best_of_n" else _weighted(answers, scores, same)
        outcomes.append(SearchOutcome(texts[chosen], answers[chosen], compute))
    return outcomes


def _scores(verifier: Verifier, problem: str, texts: list[str], cfg: SearchConfig) -> list[float]:
    step_scores = verifier.score(problem, [split_steps(t, cfg.step_delimiter) for t in texts])
    return [aggregate(s, cfg.aggregation) for s in step_scores]


def _best(scores: list[float]) -> int:
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def _clusters(answers: list, equivalent) -> list[list[int]]:
    """Indices of the samples with valid answers, grouped by equivalent answer, in order of first appearance."""
    clusters: list[list[int]] = []
    for i, answer in enumerate(answers):
        if answer is None:
            continue
        for cluster in clusters:
            if equivalent(answers[cluster[0]], answer):
                cluster.append(i)
                break
        else:
            clusters.append([i])
    return clusters


def _majority(answers: list, equivalent) -> int:
    clusters = _clusters(answers, equivalent)
    return max(clusters, key=len)[0] if clusters else 0  # max keeps the first of equal sizes


def _weighted(answers: list, scores: list[float], equivalent) -> int:
    clusters = _clusters(answers, equivalent)
    if not clusters:
        return _best(scores)
    winner = max(clusters, key=lambda c: sum(scores[i] for i in c))
    return max(winner, key=lambda i: (scores[i], -i))


def _tree_search(policy, verifier, problems, cfg, extract) -> list[SearchOutcome]:
    """Beam search and DVTS, batched over problems: each round is one policy call for every
    expansion of every problem, then one verifier call per problem."""
    width = min(cfg.width, cfg.n)
    groups = max(1, cfg.n // width)  # beams kept (beam) or subtrees (dvts)
    computes = [Compute() for _ in problems]
    # complete[p]: (rank key, candidate); beam ranks ties by generation order, dvts by subtree
    complete: list[list[tuple[tuple, _Candidate]]] = [[] for _ in problems]
    # frontier[p]: (group, candidate) pairs to expand; the first round expands the empty response.
    empty = _Candidate("", 0, False)
    if cfg.method == "beam":
        frontier = [[(0, empty)] for _ in problems]
        first_expansions = cfg.n
    else:
        frontier = [[(g, empty) for g in range(groups)] for _ in problems]
        first_expansions = width
    for round_index in range(cfg.max_steps):
        expansions = first_expansions if round_index == 0 else width
        owners, requests, parents, budgets = [], [], [], []
        for p, problem in enumerate(problems):
            for group, parent in frontier[p]:
                for _ in range(expansions):
                    owners.append((p, group))
                    requests.append((problem, parent.text))
                    parents.append(parent)
                    budgets.append(cfg.max_new_tokens - parent.tokens)
        if not requests:
            break
        completions = policy.complete(requests, cfg.temperature, budgets, cfg.step_delimiter,
                                      cfg.seed + round_index)
        candidates: list[list[tuple[int, _Candidate]]] = [[] for _ in problems]
        for (p, group), parent, c in zip(owners, parents, completions):
            computes[p].add_generation(policy, c)
            tokens = parent.tokens + c.num_tokens
            candidates[p].append((group, _Candidate(parent.text + c.text, tokens,
                                                    c.finished or tokens >= cfg.max_new_tokens)))
        last_round = round_index == cfg.max_steps - 1
        for p, problem in enumerate(problems):
            if not candidates[p]:
                frontier[p] = []
                continue
            scores = _scores(verifier, problem, [c.text for _, c in candidates[p]], cfg)
            computes[p].verifier_calls += len(scores)
            for (_, c), s in zip(candidates[p], scores):
                c.score = s
            if cfg.method == "beam":
                open_ = []
                for k, (_, c) in enumerate(candidates[p]):
                    if c.finished or last_round:
                        complete[p].append(((round_index, k), c))
                    else:
                        open_.append(c)
                ranked = sorted(open_, key=lambda c: -c.score)  # stable: ties keep generation order
                frontier[p] = [(0, c) for c in ranked[:groups]]
            else:
                frontier[p] = []
                for group in range(groups):
                    mine = [c for g, c in candidates[p] if g == group]
                    if not mine:
                        continue
                    best = mine[_best([c.score for c in mine])]
                    if best.finished or last_round:
                        complete[p].append(((group,), best))
                    else:
                        frontier[p].append((group, best))
    outcomes = []
    for p in range(len(problems)):
        finals = [c for _, c in sorted(complete[p], key=lambda kc: kc[0])]
        chosen = finals[_best([c.score for c in finals])] if finals else empty
        outcomes.append(SearchOutcome(chosen.text, extract(p, chosen.text), computes[p]))
    return outcomes
