"""Prepare SFT data: one JSONL of rows -> a sampled dataset that pretrain.py fine-tunes on.

    python -m data_io.prepare_sft_data --train my_sft.jsonl --tokenizer RUN_DIR/tokenizer \\
        --output /dev/shm/sft_data --epochs 5

As the reference's scripts/prepare_sft_data.py: rows {"instruction", "response", "condition"}
(condition optional, default direct; a comma list gives one token each); the instruction is
tokenized verbatim (prompt building is the caller's); rows with an empty response are dropped and
counted; every row appears once per epoch, each epoch in its own order (--seed); a row longer than
--context-size (default 4097 = 4096 + 1 for the autoregressive shift) is an error naming it.
--epochs is the number of epoch orders to write: the training run's epochs.

The special-token strings come from the tokenizer_info.json next to --tokenizer when there is one
(a run directory's tokenizer/ folder), else from --boq/--eoq/--eoa/--conditions, else the
tokenizer's own set (see `python -m data_io.tokenize --help`). Point data.path at --output.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from data_io import DataError
from data_io.sample_tokenized import SampleConfig, sample
from data_io.tokenize import tokenize


def prepare_sft_data(train: str, tokenizer: str, output: str, epochs: int, seed: int = 0,
                     context_size: int = 4096 + 1, conditions: list[str] | None = None,
                     specials: dict | None = None) -> Path:
    train_file, out = Path(train), Path(output)
    if not train_file.exists():
        raise DataError(f"--train {train}: no such file")
    if not train_file.is_file() or train_file.suffix != ".jsonl":
        raise DataError(f"--train {train}: not a .jsonl file")
    if epochs < 1:
        raise DataError(f"--epochs {epochs}: must be >= 1 (the training run's epochs)")
    specials = dict(specials or {})
    folder = Path(tokenizer) if Path(tokenizer).is_dir() else Path(tokenizer).parent
    info_file = folder / "tokenizer_info.json"
    if not tokenizer.startswith("tiktoken:") and info_file.is_file() and not specials and not conditions:
        info = json.loads(info_file.read_text())
        specials = {k: info[k] for k in ("boq", "eoq", "eoa", "pad", "condition_mapping") if info.get(k) is not None}  # the run's own strings
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.tokenized.") as tmp:
        tokenize([str(train_file)], tokenizer, tmp, conditions, specials)
        folder = Path(tmp) / train_file.name
        inst_len, resp_len = (np.load(folder / f"{k}.npy") for k in ("inst_len", "resp_len"))
        kept = resp_len >= 2  # an empty response is eoa alone
        if not kept.any():
            raise DataError(f"--train {train}: no row with a non-empty response ({len(kept)} rows read)")
        too_long = np.flatnonzero(kept & (inst_len + resp_len > context_size))
        if len(too_long):
            k = int(too_long[0])
            raise DataError(f"{train}: row {k + 1} is {int(inst_len[k] + resp_len[k])} tokens, over --context-size "
                            f"{context_size} ({len(too_long)} such rows); raise --context-size")
        sample(SampleConfig(tokenized_path=tmp, output_path=str(out), epochs=epochs, seed=seed,
                            context_size=context_size, min_resp_length=2))
    if (~kept).any():
        print(f"dropped {int((~kept).sum())} rows with an empty response")
    print(f"done: {int(kept.sum())} rows x {epochs} epochs in {out}; point data.path at it")
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data_io.prepare_sft_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="input JSONL")
    parser.add_argument("--tokenizer", required=True,
                        help="tokenizer.json or its folder (a run directory's tokenizer/ carries its tokenizer_info)")
    parser.add_argument("--output", required=True, help="output folder (the sampled dataset)")
    parser.add_argument("--epochs", type=int, required=True, help="epoch orders to write: the training epochs")
    parser.add_argument("--seed", type=int, default=0, help="shuffle seed (default %(default)s)")
    parser.add_argument("--context-size", type=int, default=4096 + 1,
                        help="the most tokens a row may have, +1 for the autoregressive shift (default %(default)s)")
    for role in ("boq", "eoq", "eoa", "pad"):
        parser.add_argument(f"--{role}", default=None, help=f"the {role} token string (default: see above)")
    parser.add_argument("--conditions", default=None,
                        help="comma list of NAME=TOKEN or NAME (default: see above)")
    args = parser.parse_args(argv)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()] if args.conditions else None
    specials = {r: getattr(args, r) for r in ("boq", "eoq", "eoa", "pad") if getattr(args, r)}
    try:
        prepare_sft_data(args.train, args.tokenizer, args.output, args.epochs, args.seed, args.context_size,
                         conditions, specials)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
