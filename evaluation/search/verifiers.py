"""Verifiers: scores for the steps of (partial) solutions, and how step scores become one score.

A solution is the response text; its steps are the pieces between step delimiters (newline by
default, "\\n\\n" for blank-line-separated steps), blank pieces dropped. A verifier scores every
step of every solution it is given, in [0, 1]; `aggregate` folds a solution's step scores into
one: `min` (a chain is as good as its weakest step), `prod` (the chance that every step is right)
or `last` (the last step's score, what an outcome reward model gives).

Implementations:
  - `ProgrammaticVerifier`: a function that checks one step given the problem and the earlier steps.
  - `PRMVerifier`: a Hugging Face process reward model directory, in the step-tag convention below.
  - `OutcomeVerifier`: any verifier asked about the whole solution as one step (an outcome reward model).
"""

import json
import math
from pathlib import Path
from typing import Callable, Protocol

AGGREGATIONS = ("min", "prod", "last")


def split_steps(text: str, delimiter: str = "\n") -> list[str]:
    """The steps of a solution text: pieces between delimiters, blank pieces dropped."""
    return [piece for piece in text.split(delimiter) if piece.strip()]


def aggregate(step_scores: list[float], mode: str) -> float:
    """One score for a solution from its step scores; a solution without steps scores 0."""
    if mode not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {mode!r}; choose one of {', '.join(AGGREGATIONS)}")
    if not step_scores:
        return 0.0
    if mode == "min":
        return min(step_scores)
    if mode == "prod":
        return math.prod(step_scores)
    return step_scores[-1]


class Verifier(Protocol):
    def score(self, problem: str, solutions: list[list[str]]) -> list[list[float]]:
        """For each solution (its steps), one score in [0, 1] per step."""
        ...


class ProgrammaticVerifier:
    """Steps checked by code: `check(problem, previous_steps, step)` returns True/False or a score."""

    def __init__(self, check: Callable[[str, list[str], str], float]):
        self.check = check

    def score(self, problem, solutions):
        return [[float(self.check(problem, steps[:k], step)) for k, step in enumerate(steps)] for steps in solutions]


class OutcomeVerifier:
    """An outcome reward model: `inner` scores the whole solution, steps joined back, as one step;
    every aggregation of the result is that one score."""

    def __init__(self, inner: Verifier, delimiter: str = "\n"):
        self.inner = inner
        self.delimiter = delimiter

    def score(self, problem, solutions):
        whole = [[self.delimiter.join(steps)] if steps else [] for steps in solutions]
        return self.inner.score(problem, whole)


# ---------------------------------------------------------------- Hugging Face PRM directories

PRM_FILE = "prm.json"
PRM_DEFAULTS = {"step_tag": "ки", "good_token": "+", "bad_token": "-"}  # Math-Shepherd's


class PRMVerifier:
    """A process reward model in the step-tag convention of Math-Shepherd
    (peiyi9979/math-shepherd-mistral-7b-prm), loaded with transformers.

    The model reads `problem + " " + step_1 + " " + TAG + "\\n" + step_2 + " " + TAG ...` and scores
    each step at the position of the TAG token that follows it. The directory holds a transformers
    model (config.json, weights) and its tokenizer, and optionally `prm.json` naming the tokens
    (defaults: Math-Shepherd's {"step_tag": "ки", "good_token": "+", "bad_token": "-"}). Two heads:
      - a causal LM (`...ForCausalLM`): the step's score is P(good) of the softmax over the logits
        of the good and bad tokens at the tag (Math-Shepherd);
      - a token classifier (`...ForTokenClassification`, 2 labels): P(label 1) at the tag.
    Each of step_tag, good_token and bad_token must encode to exactly one token. Models with
    their own remote-code head (Qwen2.5-Math-PRM) are not supported.
    """

    def __init__(self, model_dir: str | Path, device: str | None = None, batch_size: int = 8):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForTokenClassification, AutoTokenizer

        model_dir = Path(model_dir)
        where = f"PRM directory {model_dir}"
        if not (model_dir / "config.json").is_file():
            raise ValueError(f"{where}: no config.json; pass a directory saved with transformers' "
                             "save_pretrained (model and tokenizer)")
        spec = dict(PRM_DEFAULTS)
        if (model_dir / PRM_FILE).is_file():
            given = json.loads((model_dir / PRM_FILE).read_text())
            unknown = sorted(set(given) - set(PRM_DEFAULTS))
            if unknown:
                raise ValueError(f"{model_dir / PRM_FILE}: unknown keys {unknown}; valid: {', '.join(PRM_DEFAULTS)}")
            spec.update(given)
        config = AutoConfig.from_pretrained(model_dir)
        architectures = config.architectures or []
        if any(a.endswith("ForTokenClassification") for a in architectures):
            if config.num_labels != 2:
                raise ValueError(f"{where}: a token-classification PRM needs 2 labels (bad, good), "
                                 f"config.json has {config.num_labels}")
            auto, self.head = AutoModelForTokenClassification, "classifier"
        elif any(a.endswith("ForCausalLM") for a in architectures):
            auto, self.head = AutoModelForCausalLM, "lm"
        else:
            raise ValueError(f"{where}: config.json architectures {architectures} is neither a "
                             "...ForCausalLM (step-tag PRM) nor a ...ForTokenClassification model")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        except Exception as err:
            raise ValueError(f"{where}: cannot load its tokenizer ({err}); save it with "
                             "tokenizer.save_pretrained into the same directory") from None
        self.tag_id = self._single_token(spec["step_tag"], "step_tag", where)
        if self.head == "lm":
            self.good_id = self._single_token(spec["good_token"], "good_token", where)
            self.bad_id = self._single_token(spec["bad_token"], "bad_token", where)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        try:
            self.model = auto.from_pretrained(model_dir).to(self.device).eval()
        except (OSError, ValueError) as err:
            raise ValueError(f"{where}: cannot load the model weights ({err})") from None
        self.step_tag = spec["step_tag"]
        self.batch_size = batch_size
        self.torch = torch

    def _single_token(self, text: str, key: str, where: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1 or ids[0] == self.tokenizer.unk_token_id:
            raise ValueError(f"{where}: {key} {text!r} is not one token of its tokenizer (encodes to {ids}); "
                             f"name a token it has in {PRM_FILE}")
        return ids[0]

    def input_ids(self, problem: str, steps: list[str]) -> tuple[list[int], list[int]]:
        """(token ids, positions of the step tags). Pieces are encoded apart and the tag inserted
        by id, so each tag is exactly one token wherever it sits; a tag inside a step is removed."""
        encode = lambda text: self.tokenizer.encode(text, add_special_tokens=False)
        bos = self.tokenizer.bos_token_id
        ids = ([] if bos is None else [bos]) + encode(problem)
        positions = []
        for k, step in enumerate(steps):
            ids += encode(("\n" if k else " ") + step.replace(self.step_tag, "").strip() + " ")
            positions.append(len(ids))
            ids.append(self.tag_id)
        return ids, positions

    def score(self, problem, solutions):
        torch = self.torch
        encoded = [self.input_ids(problem, steps) for steps in solutions]
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        scores: list[list[float]] = []
        for start in range(0, len(encoded), self.batch_size):
            batch = encoded[start:start + self.batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.tensor([ids + [pad] * (width - len(ids)) for ids, _ in batch], device=self.device)
            mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch], device=self.device)
            with torch.no_grad():
                logits = self.model(input_ids=input_ids, attention_mask=mask).logits.float()
            if self.head == "lm":
                logits = logits[..., [self.good_id, self.bad_id]]
            good = torch.softmax(logits, dim=-1)[..., 0 if self.head == "lm" else 1]
            scores += [good[row, positions].tolist() for row, (_, positions) in enumerate(batch)]
        return scores
