"""Answer extraction and metrics, as the reference HRM-Text evaluation computes them.

Each function reproduces one rule of the reference's `evaluation/benchmarks.py`, quirks included
(docs/EVALUATION.md lists them), so a score here means what the reference's table means. Nothing
here knows about data files or engines.
"""

import math
from collections import Counter
from typing import Sequence

from math_verify import parse as math_parse
from math_verify import verify as math_verify

# ---------------------------------------------------------------- boxed answers


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed` (or, when there is none, the last `\\fbox`), stripped.

    Like the reference: the content is whatever lies between the first "{" after the command and
    its balancing "}", even when that brace is far from the command (`\\boxed 5 ... {x}` gives
    "x"); None when no brace follows or it never closes.
    """
    start = text.rfind("\\boxed")
    if start < 0:
        start = text.rfind("\\fbox")
        if start < 0:
            return None
    open_at = text.find("{", start)
    if open_at < 0:
        return None
    depth = 0
    for i in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[open_at + 1:i].strip()
    return None


# ---------------------------------------------------------------- GSM8k


def gsm8k_gold(answer_field: str) -> int:
    """The gold of a GSM8k `answer` field: the integer after the last '####' (commas dropped)."""
    return int(answer_field.split("####")[-1].strip().replace(",", ""))


def gsm8k_answer(generation: str) -> int | None:
    """The last non-empty \\boxed{} content (else the whole generation) read as int(float(...))
    after dropping ',' and '$'; None (invalid) when that fails. So "\\boxed{10.5}" reads as 10."""
    text = last_boxed(generation) or generation
    text = text.replace(",", "").replace("$", "").strip()
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        return None


# ---------------------------------------------------------------- MATH


def math_verdict(gold_boxed: str, generation: str) -> tuple[bool, bool]:
    """(correct, invalid): math-verify of the gold's boxed content against the generation's last
    boxed content; without a box the whole generation is parsed (and counted invalid)."""
    answer = last_boxed(generation)
    invalid = answer is None
    correct = math_verify(math_parse(gold_boxed), math_parse(generation if invalid else answer))
    return bool(correct), invalid


# ---------------------------------------------------------------- DROP


def drop_golds(row: dict) -> list[tuple[str, ...]]:
    """The distinct gold answers of an EleutherAI/drop row (answer + validated_answers), each a
    tuple of spans, as lm-eval's DROP task builds them (the reference uses its functions)."""
    from lm_eval.tasks.drop.utils import get_answers

    return [tuple(gold) for gold in get_answers(row)]


def drop_metrics(generation: str, golds: list[tuple[str, ...]]) -> dict[str, float]:
    """lm-eval's DROP em/f1 of the stripped generation taken as ONE span: a multi-span gold needs
    all of its spans in that one string to score."""
    from lm_eval.tasks.drop.utils import process_results

    return process_results({"answers": golds}, [generation.strip()])


# ---------------------------------------------------------------- multiple choice


def letters(num_options: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(num_options)]


def mcq_verdict(generation: str, gold_letter: str, num_options: int) -> tuple[float, bool]:
    """(credit, invalid) of a one-token MCQ answer: the stripped, upper-cased generation must be
    one of the option letters; anything else is invalid and earns 1/num_options (chance)."""
    answer = generation.strip().upper()
    if answer not in letters(num_options):
        return 1.0 / num_options, True
    return float(answer == gold_letter), False


def mmlu_pro_letter(generation: str, num_options: int) -> str | None:
    """MMLU-Pro's chosen letter: inside the last \\boxed{} if there is a non-empty one, the last
    "(X)"; else the last option letter standing alone as a word; else None."""
    import re

    text = last_boxed(generation) or generation
    choice = "|".join(letters(num_options))
    found = re.findall(rf"\(({choice})\)", text) or re.findall(rf"\b({choice})\b", text)
    return found[-1] if found else None


def micro_macro(stats: dict[str, dict[str, float]]) -> dict[str, float]:
    """Per-group n/acc/invalid and their unweighted means over groups (the reference reports
    the macro average under "acc"; "n" is then the number of groups)."""
    out: dict[str, float] = {}
    accs, invalids = [], []
    for group, s in stats.items():
        out[f"n_{group}"] = s["n"]
        out[f"acc_{group}"] = acc = s["correct"] / max(1, s["n"])
        out[f"invalid_{group}"] = invalid = s["invalid"] / max(1, s["n"])
        accs.append(acc)
        invalids.append(invalid)
    out["n"] = len(stats)
    out["acc"] = sum(accs) / max(1, len(stats))
    out["invalid"] = sum(invalids) / max(1, len(stats))
    return out


# ---------------------------------------------------------------- AIME majority voting


def aime_vote(generation: str) -> int | None:
    """A sample's vote: the boxed content (else the whole text) as an int in 1..999, else None."""
    text = last_boxed(generation)
    text = generation if text is None else text
    try:
        value = int(text)
    except ValueError:
        return None
    return value if 1 <= value <= 999 else None


def aime_correct(gold: int, generation: str) -> bool:
    """pass@k's correctness: math-verify of str(gold) against the boxed content (else the text)."""
    text = last_boxed(generation)
    return bool(math_verify(str(gold), math_parse(generation if text is None else text)))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k: 1 - C(n-c, k) / C(n, k) for n samples of which c are correct."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_pass_at_k(votes: Sequence[int], gold: int, k: int) -> bool:
    """Gold among the k most voted answers (ties ranked by first appearance)."""
    return gold in [answer for answer, _ in Counter(votes).most_common(k)]
