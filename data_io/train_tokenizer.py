"""Train a byte-level BPE tokenizer (HF `tokenizers`) on JSONL/Parquet instruction/response rows.

    python -m data_io.train_tokenizer --inputs corpus/ --out tok/ --vocab-size 32000

Writes OUT/tokenizer.json (loads with transformers' PreTrainedTokenizerFast) holding the special
tokens <|boq|> <|eoq|> <|eoa|> <|pad|> and one <|NAME|> per condition: those given with
--conditions plus any that the rows use. Digits are split one per token so numbers tokenize
uniformly.
"""

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from data_io import DataError
from data_io.rows import count_lines, find_sources, read_rows
from data_io.text_tokenizer import DEFAULT_CONDITIONS, STRUCTURE_TOKENS, condition_token


def train_tokenizer(inputs: list[str], out_dir: str, vocab_size: int = 32000,
                    conditions: list[str] = DEFAULT_CONDITIONS, min_frequency: int = 2) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    sources = find_sources(inputs)
    seen_conditions: set[str] = set()

    def texts():
        for file, name in sources:
            for _, instruction, response, conds in tqdm(read_rows(file), total=count_lines(file),
                                                     desc=f"reading {name}", unit="row"):
                seen_conditions.update(conds)
                yield instruction
                yield response

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    specials = list(STRUCTURE_TOKENS) + [condition_token(c) for c in conditions]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=specials, show_progress=True,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts(), trainer)
    extra = sorted(seen_conditions - set(conditions))
    if extra:  # conditions used by the rows but not listed get their tokens too
        tok.add_special_tokens([condition_token(c) for c in extra])
        if tok.get_vocab_size() > vocab_size:
            # Found while training, so they come on top of it: past 65536 ids, token files
            # double in size (int32 instead of uint16).
            print(f"warning: the rows use conditions {extra} not in --conditions; their tokens make the "
                  f"vocab {tok.get_vocab_size()} > --vocab-size {vocab_size}. List them in --conditions "
                  "to stay within the size", file=sys.stderr)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    print(f"wrote {out / 'tokenizer.json'}: vocab {tok.get_vocab_size()}, "
          f"conditions {list(conditions) + extra}")
    return out / "tokenizer.json"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data_io.train_tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", required=True, help="JSONL/Parquet files or folders (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder for tokenizer.json")
    parser.add_argument("--vocab-size", type=int, default=32000, help="total vocabulary incl. special tokens (default 32000)")
    parser.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS),
                        help="comma list of condition names that get a token (default %(default)s)")
    parser.add_argument("--min-frequency", type=int, default=2, help="minimum pair count for a merge (default 2)")
    args = parser.parse_args(argv)
    try:
        train_tokenizer(args.inputs, args.out, args.vocab_size,
                        [c.strip() for c in args.conditions.split(",") if c.strip()], args.min_frequency)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
