r"""Build the embedded demo corpus and run it through train_tokenizer -> tokenize -> sample_tokenized.

    python -m data_io.demo --out demo_data

Synthetic tasks a ~1-3M-parameter model learns within minutes on a CPU. `--task basic`
(condition `direct`, the default):
  add      "add 45 78"       -> "123"     (operands 0..99)
  reverse  "reverse 93021"   -> "12039"   (2..5 digits)
  sort     "sort 5129"       -> "1259"    (2..5 digits)
The tokenizer splits digits one per token, so every sample stays under 20 tokens (context 64).

`--task steps` (condition `cot`, for test-time search, `make ttc-demo`): a running sum of 4 or 5
digits 1..9 written one step per line, then the answer line; every line is checkable on its own
(`check_step`):
  sum      "sum 7 5 8 6"     -> "7+5=12\n12+8=20\n20+6=26\nanswer 26"
Writes DIR/corpus/train.jsonl, DIR/heldout.jsonl (problems absent from training; rows with
instruction, response, condition), DIR/tokenizer/, DIR/tokenized/ and the sampled dataset DIR/sampled.
With --special-tokens data_io the tokenizer holds data_io's special tokens instead of ours, so the
data, the run and its export use data_io's strings (boq <|im_start|>, eoq <|im_end|>, eoa <|box_end|>).
"""

import argparse
import json
import random
from pathlib import Path

from data_io import DataError
from data_io.sample_tokenized import SampleConfig, sample
from data_io.tokenize import tokenize
from data_io.train_tokenizer import DATA_IO_SPECIAL_TOKENS, train_tokenizer


STEP_CONDITION = "cot"


def make_problem(rng: random.Random) -> tuple[str, str]:
    task = rng.choice(("add", "reverse", "sort"))
    if task == "add":
        a, b = rng.randrange(100), rng.randrange(100)
        return f"add {a} {b}", str(a + b)
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(2, 5)))
    if task == "reverse":
        return f"reverse {digits}", digits[::-1]
    return f"sort {digits}", "".join(sorted(digits))


def make_step_problem(rng: random.Random) -> tuple[str, str]:
    numbers = [rng.randrange(1, 10) for _ in range(rng.randint(4, 5))]
    lines, total = [], numbers[0]
    for n in numbers[1:]:
        lines.append(f"{total}+{n}={total + n}")
        total += n
    return "sum " + " ".join(map(str, numbers)), "\n".join(lines + [f"answer {total}"])


def check_step(instruction: str, previous_steps: list[str], step: str) -> bool:
    """Whether `step` is the right next line of a `sum` solution whose earlier lines are
    `previous_steps`: line k adds the (k+2)-th number to the true running sum, and the line after
    the last addition states the total. A line after a wrong line can still be right."""
    numbers = [int(n) for n in instruction.split()[1:]]
    k = len(previous_steps)
    if k == len(numbers) - 1:
        return step.strip() == f"answer {sum(numbers)}"
    if k >= len(numbers):
        return False
    partial = sum(numbers[:k + 1])
    return step.strip() == f"{partial}+{numbers[k + 1]}={partial + numbers[k + 1]}"


TASKS = {"basic": (make_problem, "direct"), "steps": (make_step_problem, STEP_CONDITION)}


def make_corpus(train_size: int, heldout_size: int, seed: int, task: str = "basic") -> tuple[list[dict], list[dict]]:
    """Held-out problems first, then training problems, none of them held out. Training draws
    repeat freely: the add space is small (10k pairs), and each task keeps a third of the data."""
    make_problem, condition = TASKS[task]
    rng = random.Random(seed)
    heldout: dict[str, str] = {}
    while len(heldout) < heldout_size:
        instruction, response = make_problem(rng)
        heldout[instruction] = response
    train: list[tuple[str, str]] = []
    while len(train) < train_size:
        instruction, response = make_problem(rng)
        if instruction not in heldout:
            train.append((instruction, response))
    rows = lambda pairs: [{"instruction": i, "response": r, "condition": condition} for i, r in pairs]
    return rows(train), rows(heldout.items())


def build_demo(out_dir: str, train_size: int = 150_000, heldout_size: int = 1000, seed: int = 0,
               epochs: int = 4, context_size: int = 64, vocab_size: int = 384, task: str = "basic",
               special_tokens: list[str] | None = None) -> Path:
    out = Path(out_dir)
    (out / "corpus").mkdir(parents=True, exist_ok=True)
    train, heldout = make_corpus(train_size, heldout_size, seed, task)
    for file, rows in ((out / "corpus" / "train.jsonl", train), (out / "heldout.jsonl", heldout)):
        file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tokenizer = train_tokenizer([str(out / "corpus")], str(out / "tokenizer"), vocab_size, [TASKS[task][1]],
                                special_tokens=special_tokens)
    tokenize([str(out / "corpus")], str(tokenizer), str(out / "tokenized"))
    sample(SampleConfig(tokenized_path=str(out / "tokenized"), output_path=str(out / "sampled"),
                        epochs=epochs, seed=seed, context_size=context_size))
    print(f"demo corpus ready: {len(train)} training and {len(heldout)} held-out problems; "
          f"dataset {out / 'sampled'}, held-out rows {out / 'heldout.jsonl'}")
    return out / "sampled"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data_io.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--task", choices=sorted(TASKS), default="basic",
                        help="basic: add/reverse/sort; steps: step-by-step sums (default %(default)s)")
    parser.add_argument("--train-size", type=int, default=150_000, help="training problems (default %(default)s)")
    parser.add_argument("--heldout-size", type=int, default=1000, help="held-out problems (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="corpus and sampling seed (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=4, help="sampled epochs (default %(default)s)")
    parser.add_argument("--context-size", type=int, default=64, help="sampled context_size (default %(default)s)")
    parser.add_argument("--vocab-size", type=int, default=384, help="BPE vocabulary (default %(default)s)")
    parser.add_argument("--special-tokens", choices=("ours", "data_io"), default="ours",
                        help="the tokenizer's special tokens: ours (<|boq|> ...) or data_io's (<|im_start|> ...)")
    args = parser.parse_args(argv)
    for flag, value, least in (("--train-size", args.train_size, 1), ("--heldout-size", args.heldout_size, 0),
                               ("--epochs", args.epochs, 1)):
        if value < least:
            parser.error(f"{flag} {value}: must be >= {least}")
    try:
        build_demo(args.out, args.train_size, args.heldout_size, args.seed, args.epochs, args.context_size,
                   args.vocab_size, args.task,
                   list(DATA_IO_SPECIAL_TOKENS) if args.special_tokens == "data_io" else None)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
