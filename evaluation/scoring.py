"""Answer extraction and metrics, independent of data loading and of the engine.

Every extractor returns None for an answer it cannot find: such a generation scores zero and is
counted as invalid. `evaluate_generations` turns a benchmark's items and generations into metrics,
including majority voting (maj@n) and the unbiased pass@k estimator when several samples exist.
"""

import math
import re
import string
from decimal import Decimal, InvalidOperation
from typing import Callable, Sequence

from math_verify import parse as math_parse
from math_verify import verify as math_verify

# ---------------------------------------------------------------- boxed answers


def last_boxed(text: str) -> str | None:
    """Content of the last `\\boxed{...}` (or `\\fbox{...}`, or `\\boxed 5`) in text, braces balanced."""
    starts = [(text.rfind(command), command) for command in ("\\boxed", "\\fbox")]
    start, command = max(starts)
    if start < 0:
        return None
    rest = text[start + len(command):]
    if rest.startswith(" "):  # `\boxed 5`: the argument is the next word
        word = rest.split()
        return word[0].rstrip("$.") if word else None
    if not rest.startswith("{"):
        return None
    depth = 0
    for i, ch in enumerate(rest):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            return rest[1:i]
    return None  # unbalanced: the generation was cut off inside the box


# ---------------------------------------------------------------- GSM8k numbers

# Thousands separators only in groups of three, so "3,4" reads as two numbers, not 34.
_NUMBER = re.compile(r"-?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")


def _to_decimal(token: str) -> Decimal | None:
    try:
        return Decimal(token.replace("$", "").replace(",", "").replace(" ", ""))
    except InvalidOperation:
        return None


def _first_number(text: str) -> Decimal | None:
    match = _NUMBER.search(text)
    return _to_decimal(match.group()) if match else None


def _last_number(text: str) -> Decimal | None:
    matches = _NUMBER.findall(text)
    return _to_decimal(matches[-1]) if matches else None


def extract_number(generation: str) -> Decimal | None:
    """The final numeric answer of a chain of thought.

    Most explicit marker first: the last \\boxed{}, then text after the last '####', then after the
    last 'answer is', else the last number anywhere. Decimal keeps 72, 72.0 and $72.00 equal without
    float rounding.
    """
    boxed = last_boxed(generation)
    if boxed is not None:
        return _last_number(boxed)
    for marker in ("####", "answer is"):
        at = generation.lower().rfind(marker)
        if at >= 0:
            number = _first_number(generation[at + len(marker):])
            if number is not None:
                return number
    return _last_number(generation)


def gsm8k_reference(answer_field: str) -> Decimal:
    """The gold number of a GSM8k `answer` field: what follows '####'."""
    number = _to_decimal(answer_field.split("####")[-1].strip())
    if number is None:
        raise ValueError(f"GSM8k answer without a number after '####': {answer_field!r}")
    return number


# ---------------------------------------------------------------- MATH


def parse_math(text: str) -> list | None:
    """math_verify's parse (boxed answers preferred, then the last LaTeX or plain expression)."""
    parsed = math_parse(text)
    return parsed or None


def math_equivalent(gold: list, answer: list) -> bool:
    return bool(math_verify(gold, answer))


# ---------------------------------------------------------------- DROP (official evaluation style)


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def _normalize_drop_token(token: str) -> str:
    token = token.lower()
    if not _is_number(token):  # keep "2.5" intact, strip "Smith," to "smith"
        token = "".join(ch for ch in token if ch not in string.punctuation)
    if _is_number(token):  # "2", "2.0" and "02" are the same answer
        token = str(float(token))
    token = re.sub(r"\b(a|an|the)\b", " ", token)
    return " ".join(token.split())


def normalize_drop(text: str) -> str:
    """DROP's answer normalization: split on spaces and hyphens, then per token lower-case, drop
    punctuation (not inside numbers), canonicalize numbers, drop articles."""
    tokens = (_normalize_drop_token(t) for t in re.split(" |-", text))
    return " ".join(t for t in tokens if t)


def _drop_bag_f1(predicted: set[str], gold: set[str]) -> float:
    gold_numbers = {t for t in gold if _is_number(t)}
    # A number answer is wrong unless the prediction contains one of its numbers, whatever the overlap.
    if gold_numbers and not gold_numbers & predicted:
        return 0.0
    common = len(predicted & gold)
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(gold)
    return 2 * precision * recall / (precision + recall)


def drop_metrics(prediction: str, gold_answers: Sequence[str]) -> dict[str, float]:
    """Exact match and bag-of-words F1 (rounded to 2 decimals, as officially), each the max over gold answers."""
    normalized = normalize_drop(prediction)
    bag = set(normalized.split())
    em = f1 = 0.0
    for gold in gold_answers:
        gold_normalized = normalize_drop(gold)
        if not gold_normalized:
            continue
        em = max(em, float(normalized == gold_normalized))
        f1 = max(f1, round(_drop_bag_f1(bag, set(gold_normalized.split())), 2))
    return {"em": em, "f1": f1}


def answer_line(generation: str) -> str | None:
    """The first non-empty line after the last marker ("answer is", "answer:", "option is", "choice:"
    ...), else of the whole text."""
    marker = None
    for marker in re.finditer(r"(?:answer|option|choice)(?: is|:)", generation, flags=re.IGNORECASE):
        pass
    text = generation[marker.end():] if marker is not None else generation
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].lstrip(":").strip() if lines else None


def extract_short_answer(generation: str) -> str | None:
    """A span or number answer (DROP): the answer line without a final period."""
    line = answer_line(generation)
    return line.rstrip(".").strip() or None if line is not None else None


# ---------------------------------------------------------------- multiple choice letters


def option_letters(num_options: int) -> str:
    return string.ascii_uppercase[:num_options]


def extract_choice(generation: str, options: Sequence[str]) -> str | None:
    """The option letter a generation picks, or None (invalid).

    Looks at the first line after the last "answer is" / "answer:" (or of the whole generation) and
    accepts "B", "(b)", "B.", "B) text", "b) text", "B: text", "**B**", "B text" when text is option B, or
    exactly one option's text ("Yes" for BoolQ). A letter outside the options is invalid.
    """
    letters = option_letters(len(options))
    line = answer_line(generation.replace("*", ""))  # "*": markdown bold around the letter
    if line is None:
        return None
    letter = None
    if match := re.fullmatch(r"\(?([A-Za-z])\)?[.):]?", line):  # a lone letter, any case
        letter = match.group(1).upper()
    elif match := re.match(r"\(([A-Za-z])\)", line):  # "(b) text"
        letter = match.group(1).upper()
    elif match := re.match(r"([A-Za-z])[.):](\s|$)", line):  # "B. text", "b) text"
        letter = match.group(1).upper()
    elif (match := re.match(r"([A-Z])\s+(.+)", line)) and match.group(1) in letters:
        # "B Paris" names option B; "A dog runs" starts with an article and names nothing.
        if _plain(match.group(2)) == _plain(options[letters.index(match.group(1))]):
            letter = match.group(1)
    if letter is None:
        by_text = [i for i, option in enumerate(options) if _plain(option) == _plain(line)]
        return letters[by_text[0]] if len(by_text) == 1 else None
    return letter if letter in letters else None


def _plain(text: str) -> str:
    return " ".join(text.lower().strip().rstrip(".").split())


# ---------------------------------------------------------------- voting, pass@k, aggregation


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): 1 - C(n-c, k) / C(n, k), with n samples of which c are correct."""
    if not 0 < k <= n:
        raise ValueError(f"pass@k needs 0 < k <= n, got k={k}, n={n}")
    if n - c < k:  # every k-subset holds a correct sample
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_ks(n: int) -> list[int]:
    """The k reported for n samples: 1, the powers of two below n, and n."""
    ks = [k for k in (2 ** i for i in range(n.bit_length())) if k < n]
    return sorted(set(ks + [1, n]))


def majority_vote(answers: Sequence, equivalent: Callable[[object, object], bool]):
    """The most frequent valid answer under `equivalent` (ties: the one seen first); None if none is valid.

    Clusters by an equivalence test instead of hashing, because MATH answers are only comparable
    through math_verify (\\frac{1}{2} and 0.5 vote together).
    """
    clusters: list[list] = []
    for answer in answers:
        if answer is None:
            continue
        for cluster in clusters:
            if equivalent(cluster[0], answer):
                cluster.append(answer)
                break
        else:
            clusters.append([answer])
    if not clusters:
        return None
    return max(clusters, key=len)[0]  # max keeps the first of equally large clusters


def evaluate_generations(benchmark, items: Sequence, generations: Sequence[Sequence[str]]) -> dict:
    """Metrics of one benchmark from its items and each item's n generations.

    Per item: each metric averaged over the n samples (with n = 1 the plain score), and for n > 1
    the majority-voted answer's metrics (`maj@n_<metric>`) and `pass@k` on the benchmark's
    correctness metric. Items are averaged uniformly, or per group and then over groups for a
    benchmark with `macro_average` (MMLU's subjects). Invalid answers score 0 and are counted.
    """
    per_item: list[dict[str, float]] = []
    num_invalid = 0
    num_samples = len(generations[0]) if generations else 0
    for item, samples in zip(items, generations, strict=True):
        answers = [benchmark.extract(benchmark.own_response(text), item) for text in samples]
        num_invalid += sum(answer is None for answer in answers)
        scores = [benchmark.score(answer, item) for answer in answers]
        row = {name: sum(s[name] for s in scores) / len(scores) for name in benchmark.metric_names}
        if len(samples) > 1:
            voted = majority_vote(answers, lambda a, b: benchmark.equivalent(a, b, item))
            for name, value in benchmark.score(voted, item).items():
                row[f"maj@{len(samples)}_{name}"] = value
            correct = sum(s[benchmark.correct_metric] == 1.0 for s in scores)
            for k in pass_ks(len(samples)):
                row[f"pass@{k}"] = pass_at_k(len(samples), correct, k)
        per_item.append(row)

    metrics: dict[str, float] = {}
    if per_item:
        groups: dict[str, list[dict]] = {}
        for item, row in zip(items, per_item):
            groups.setdefault(item.group if benchmark.macro_average else "", []).append(row)
        for name in per_item[0]:
            group_means = [sum(r[name] for r in rows) / len(rows) for rows in groups.values()]
            metrics[name] = sum(group_means) / len(group_means)
        if benchmark.macro_average:
            metrics["num_groups"] = len(groups)
    metrics["num_items"] = len(items)
    metrics["num_samples"] = num_samples
    metrics["num_invalid"] = num_invalid
    metrics["invalid_rate"] = num_invalid / max(1, len(items) * num_samples)
    return metrics
