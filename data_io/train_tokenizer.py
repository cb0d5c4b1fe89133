"""Train a byte-level BPE (or Unigram) tokenizer (HF `tokenizers`) on JSONL/Parquet instruction/response rows.

    python -m data_io.train_tokenizer --inputs corpus/ --out tok/
    python -m data_io.train_tokenizer --inputs data/ data_clustered/ --out tok/ \\
        --prefix-config prefix_config.yaml --special-tokens data_io     # as data_io trains its own

Trained as data_io's train_tokenizer does: NFC normalization, a regex pre-split (contractions,
letter runs, single digits, punctuation runs, newlines, spaces) then byte-level, each instruction
and response a document cut to its first --truncate-len characters; with --prefix-config a source
whose first matching rule has max_per_file contributes at most --limit-mul-factor x max_per_file
documents (a random subset, fixed by --seed and the source name).

Writes OUT/tokenizer.json (loads with transformers' PreTrainedTokenizerFast). Its special tokens are
--special-tokens: by default ours, <|boq|> <|eoq|> <|eoa|> <|pad|> and one <|NAME|> per condition
(--conditions, plus any condition the rows use); `data_io` gives data_io's list, whose roles are
<|im_start|> <|im_end|> <|box_end|> (see `python -m data_io.tokenize --help`).
"""

import argparse
import random
import sys
from pathlib import Path

from tqdm import tqdm

from data_io import DataError
from data_io.rows import count_lines, find_sources, read_rows
from data_io.sample_tokenized import load_rules
from data_io.text_tokenizer import DEFAULT_CONDITIONS, DEFAULT_SPECIALS, ROLES, condition_token

# data_io's pre-split (Qwen2's): contractions, letters with one leading non-letter, single digits,
# punctuation runs with their newlines, newline runs, spaces.
PRE_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
             r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# data_io's default --special-tokens, in its order.
DATA_IO_SPECIAL_TOKENS = (
    "<|PAD|>", "<|direct|>", "<|cot|>", "<|noisy|>", "<|synth|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_call>",
    "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")
TOKENIZER_TYPES = ("bpe", "unigram")


def train_tokenizer(inputs: list[str], out_dir: str, vocab_size: int = 65536,
                    conditions: list[str] = DEFAULT_CONDITIONS, min_frequency: int = 2,
                    tokenizer_type: str = "bpe", special_tokens: list[str] | None = None, seed: int = 0,
                    prefix_config: str | None = None, limit_mul_factor: int = 10,
                    truncate_len: int = 10_000) -> Path:
    """`special_tokens`: the full list (None: ours for `conditions`; see the module docstring)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    if tokenizer_type not in TOKENIZER_TYPES:
        raise DataError(f"tokenizer type {tokenizer_type!r}: must be one of {TOKENIZER_TYPES}")
    sources = find_sources(inputs)
    rules = load_rules(prefix_config)
    seen_conditions: set[str] = set()
    rows_read = 0

    def documents(file: Path, name: str):
        nonlocal rows_read
        for _, instruction, response, conds in tqdm(read_rows(file), total=count_lines(file),
                                                 desc=f"reading {name}", unit="row"):
            rows_read += 1
            seen_conditions.update(conds)
            yield instruction[:truncate_len]
            yield response[:truncate_len]

    def texts():
        for file, name in sources:
            rule = next((r for r in rules if name.startswith(r.prefix)), None)
            if rule is None or rule.max_per_file is None:
                yield from documents(file, name)
                continue
            docs, limit = list(documents(file, name)), limit_mul_factor * rule.max_per_file
            if len(docs) > limit:  # a random subset, the same for the same seed and source
                keep = sorted(random.Random(f"{seed}:{name}").sample(range(len(docs)), limit))
                docs = [docs[k] for k in keep]
            yield from docs

    specials = list(special_tokens or [*(DEFAULT_SPECIALS[r] for r in ROLES), *map(condition_token, conditions)])
    alphabet = pre_tokenizers.ByteLevel.alphabet()  # every byte stays encodable
    if vocab_size < len(alphabet) + len(specials):
        raise DataError(f"--vocab-size {vocab_size} is below the byte alphabet ({len(alphabet)}) plus the "
                        f"{len(specials)} special tokens: give at least {len(alphabet) + len(specials)}")
    byte_level = dict(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok = Tokenizer(models.BPE() if tokenizer_type == "bpe" else models.Unigram())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRE_SPLIT), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(**byte_level)])
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    if tokenizer_type == "bpe":
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials,
                                      show_progress=True, initial_alphabet=alphabet)
    else:
        trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=True,
                                          initial_alphabet=alphabet)
    tok.train_from_iterator(texts(), trainer)
    if not rows_read:
        raise DataError(f"no rows in {', '.join(inputs)}: a tokenizer needs text to learn from")
    extra = sorted(c for c in seen_conditions - set(conditions) if condition_token(c) not in specials)
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
    print(f"wrote {out / 'tokenizer.json'}: {tokenizer_type}, vocab {tok.get_vocab_size()}, "
          f"{len(specials) + len(extra)} special tokens")
    return out / "tokenizer.json"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data_io.train_tokenizer", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", required=True, help="JSONL/Parquet files or folders (searched recursively)")
    parser.add_argument("--out", required=True, help="output folder for tokenizer.json")
    parser.add_argument("--vocab-size", type=int, default=65536, help="total vocabulary incl. special tokens (default %(default)s)")
    parser.add_argument("--tokenizer-type", choices=TOKENIZER_TYPES, default="bpe", help="model (default %(default)s)")
    parser.add_argument("--conditions", default=",".join(DEFAULT_CONDITIONS),
                        help="comma list of condition names that get a <|NAME|> token (default %(default)s)")
    parser.add_argument("--special-tokens", default=None,
                        help="comma list of all special tokens, or `data_io` for data_io's list (default: ours, "
                             "<|boq|>,<|eoq|>,<|eoa|>,<|pad|> and one <|NAME|> per condition)")
    parser.add_argument("--prefix-config", default=None,
                        help="sample_tokenized's rules file: caps the documents of sources with max_per_file")
    parser.add_argument("--limit-mul-factor", type=int, default=10,
                        help="documents kept per capped source = this x max_per_file (default %(default)s)")
    parser.add_argument("--truncate-len", type=int, default=10_000,
                        help="characters kept of each instruction and response (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the capped sources' subsets (default %(default)s)")
    parser.add_argument("--min-frequency", type=int, default=2, help="bpe: minimum pair count for a merge (default 2)")
    args = parser.parse_args(argv)
    special_tokens = None
    if args.special_tokens == "data_io":
        special_tokens = list(DATA_IO_SPECIAL_TOKENS)
    elif args.special_tokens:
        special_tokens = [t.strip() for t in args.special_tokens.split(",") if t.strip()]
    try:
        train_tokenizer(args.inputs, args.out, args.vocab_size,
                        [c.strip() for c in args.conditions.split(",") if c.strip()], args.min_frequency,
                        args.tokenizer_type, special_tokens, args.seed, args.prefix_config,
                        args.limit_mul_factor, args.truncate_len)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
