"""Test-time search in evaluation.main: `search=beam search.n=16 search.verifier=PRM_DIR ...`.

Each benchmark item gets one response, the one the search method picks, and is scored as a
greedy response would be. The benchmark's generation plan supplies the condition, max_tokens (per
response), max_context and batch_size; the `search` keys the rest. Majority vote and weighted best-of-N group
responses by answer: the number of a GSM8k or AIME response, the boxed expression of a MATH one,
else the stripped response text (a multiple-choice letter, a DROP span).
"""

from evaluation import scoring
from evaluation.search.methods import VERIFIED, SearchConfig, search
from evaluation.search.policy import EnginePolicy
from evaluation.search.verifiers import OutcomeVerifier, PRMVerifier

# evaluation.main's `search` keys that are not SearchConfig fields
VERIFIER_KEYS = ("verifier", "outcome")

ANSWERS = {"GSM8k": scoring.gsm8k_answer, "AIMEMajorityVoting": scoring.aime_vote, "MATH": scoring.last_boxed}


def answer_of(benchmark: str, text: str):
    if benchmark in ANSWERS:
        return ANSWERS[benchmark](text)
    return text.strip() or None


def load_verifier(search_cfg: dict):
    """The PRM directory named by search.verifier (as an outcome model with search.outcome)."""
    if search_cfg["method"] not in VERIFIED:
        return None
    if not search_cfg.get("verifier"):
        raise ValueError(f"search={search_cfg['method']} ranks responses: name a PRM directory with "
                         "search.verifier=PATH (a transformers model in the step-tag convention, "
                         "see evaluation/search/verifiers.py)")
    prm = PRMVerifier(search_cfg["verifier"])
    return OutcomeVerifier(prm, search_cfg["step_delimiter"]) if search_cfg.get("outcome") else prm


def search_responses(engine, search_cfg: dict, verifier, plan: dict, prompts: list[str],
                     benchmark_names: list[str]) -> tuple[list[list[str]], dict]:
    """One response per prompt (benchmark_names[i]: the benchmark of prompt i), and the compute
    spent, summed over prompts."""
    cfg = SearchConfig(**{k: v for k, v in search_cfg.items() if k not in VERIFIER_KEYS},
                       max_new_tokens=plan["max_tokens"])
    policy = EnginePolicy(engine, plan["condition"], plan["batch_size"], plan["max_context"])
    outcomes = search(policy, verifier, prompts, cfg, lambda i, text: answer_of(benchmark_names[i], text))
    compute = {"tokens": sum(o.compute.tokens for o in outcomes),
               "verifier_calls": sum(o.compute.verifier_calls for o in outcomes),
               "flops": sum(o.compute.flops for o in outcomes)}
    return [[o.text] for o in outcomes], compute
