"""Tokenize JSONL/Parquet instruction/response rows into one folder of arrays per source file.

    python -m data_io.tokenize --inputs corpus/ --tokenizer tok/tokenizer.json --out tokenized/
    python -m data_io.tokenize --inputs corpus/ --tokenizer tiktoken:cl100k_base --out tokenized/

Output: OUT/tokenizer_info.json (see data_io/text_tokenizer.py; HF tokenizers are copied to
OUT/tokenizer.json) and, per source file NAME (its path below the given folder with `/` flattened
to `__`, as data_io names them: SYNTH/part1.jsonl -> SYNTH__part1.jsonl), OUT/NAME/ holding
tokens.npy and inst_start/inst_len/resp_start/resp_len.npy (a row's instruction
`boq + condition tokens + text + eoq` is followed by its response `text + eoa` in tokens.npy), plus
source.json. Incremental: a source whose size, mtime and tokenizer are unchanged is skipped; output
folders of sources no longer given are removed. OUT/.tokenize_manifest.json lists what this tool
wrote: it replaces and removes those entries only, and refuses an OUT inside an input. Encoding
runs on all cores.

The special tokens: --boq/--eoq/--eoa/--pad and --conditions name the strings (as data_io's
tokenizer takes them); by default a tokenizer's own set is used, ours (<|boq|> <|eoq|> <|eoa|>
<|pad|>, <|NAME|> per condition) or else data_io's (<|im_start|> <|im_end|> <|box_end|>,
direct=<|object_ref_start|> cot=<|object_ref_end|> noisy=<|quad_start|> synth=<|quad_end|>).
"""

import argparse
import json
import os
import shutil
from pathlib import Path

import numpy as np
from tqdm import tqdm

from data_io import DataError
from data_io.outputs import Manifest, check_apart
from data_io.rows import count_lines, find_sources, read_rows
from data_io.spans import save_spans, token_dtype
from data_io.text_tokenizer import TextTokenizer, load_tokenizer, parse_condition_mapping

ENCODE_BATCH_ROWS = 4096
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_info.json")


def tokenize(inputs: list[str], tokenizer, out_dir: str, conditions: list[str] | None = None,
             specials: dict | None = None) -> dict:
    """`tokenizer`: see load_tokenizer (path, "tiktoken:NAME" or a tiktoken.Encoding); `conditions`:
    NAME or NAME=TOKEN items; `specials`: role strings {"boq", "eoq", "eoa", "pad"} (defaults: see
    the module docstring). Returns counts {"tokenized": n, "skipped": n, "pruned": n}."""
    specials = dict(specials or {})
    if conditions:
        specials["condition_mapping"] = parse_condition_mapping(conditions)
    tok = load_tokenizer(tokenizer, specials)
    out = Path(out_dir)
    check_apart(out, inputs, "--out")
    sources = find_sources(inputs)
    manifest = Manifest(out, "tokenize")
    written = ["tokenizer_info.json", *(["tokenizer.json"] if tok.kind == "hf" else [])]
    manifest.check_free([*written, *(n for _, name in sources for n in (name, name + ".partial"))])  # before writing
    info = tok.info()
    if tok.kind == "hf":  # keep the tokenizer with the data it produced
        copy = manifest.claim("tokenizer.json")
        if Path(tok.path) != copy.resolve():
            shutil.copyfile(tok.path, copy)
        info["tokenizer_path"] = str(copy.resolve())
    manifest.claim("tokenizer_info.json").write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")

    counts = {"tokenized": 0, "skipped": 0, "pruned": 0}
    for file, name in sources:
        stat = file.stat()
        record = {"source": str(file.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                  "tokenizer": tok.fingerprint}
        target = manifest.claim(name)
        if _read_record(target) == record:
            counts["skipped"] += 1
            continue
        _tokenize_file(file, name, tok, target, manifest.claim(name + ".partial"), record)
        manifest.remove(name + ".partial")
        counts["tokenized"] += 1

    # Only what this tool wrote is pruned (sources no longer given, partial folders of a killed run).
    counts["pruned"] = manifest.prune(keep={name for _, name in sources} | set(TOKENIZER_FILES))
    print(f"tokenize: {counts['tokenized']} tokenized, {counts['skipped']} unchanged, "
          f"{counts['pruned']} removed -> {out}")
    return counts


def _read_record(folder: Path) -> dict | None:
    try:
        record = json.loads((folder / "source.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return {k: record.get(k) for k in ("source", "size", "mtime_ns", "tokenizer")}


def _tokenize_file(file: Path, name: str, tok: TextTokenizer, target: Path, partial: Path, record: dict) -> None:
    eoa = tok.eoa_id
    pieces: list[np.ndarray] = []
    inst_len: list[int] = []
    resp_len: list[int] = []
    batch: list[tuple[str, str, str, list[str]]] = []

    def flush():
        inst_ids = tok.encode_batch([b[1] for b in batch])
        resp_ids = tok.encode_batch([b[2] for b in batch])
        for (where, _, _, conds), i_ids, r_ids in zip(batch, inst_ids, resp_ids):
            unknown = [c for c in conds if c not in tok.conditions]
            roles = [c for c in unknown if tok.role_of(c)]
            if roles:
                raise DataError(f"{where}: condition {roles} names a structure token ({tok.role_of(roles[0])}); "
                                "pick another condition name")
            if unknown:
                raise DataError(f"{where}: condition {unknown} has no token in this tokenizer (it knows "
                                f"{tok.conditions}); fix the row, or retrain the tokenizer with the "
                                "condition (tiktoken: pass --conditions)")
            inst = tok.instruction_ids(i_ids, conds)
            resp = r_ids + [eoa]
            pieces.append(np.asarray(inst + resp, dtype=np.int64))
            inst_len.append(len(inst))
            resp_len.append(len(resp))
        batch.clear()

    for row in tqdm(read_rows(file), total=count_lines(file), desc=f"tokenizing {name}", unit="row"):
        batch.append(row)
        if len(batch) == ENCODE_BATCH_ROWS:
            flush()
    flush()

    tokens = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
    inst_len_a = np.asarray(inst_len, np.int64)
    resp_len_a = np.asarray(resp_len, np.int64)
    sample_start = np.concatenate([[0], np.cumsum(inst_len_a + resp_len_a)[:-1]]) if pieces else inst_len_a
    # Written next to the target and renamed, so an interrupted run never leaves a half folder.
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    np.save(partial / "tokens.npy", tokens.astype(token_dtype(tok.vocab_size)))
    save_spans(partial, {"inst_start": sample_start, "inst_len": inst_len_a,
                         "resp_start": sample_start + inst_len_a, "resp_len": resp_len_a})
    (partial / "source.json").write_text(json.dumps({**record, "rows": len(inst_len)}, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(partial, target)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m data_io.tokenize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="+", required=True, help="JSONL/Parquet files or folders (searched recursively)")
    parser.add_argument("--tokenizer", required=True,
                        help="tokenizer.json (or its folder) from data_io.train_tokenizer, or tiktoken:NAME "
                             "(offline: loaded from TIKTOKEN_CACHE_DIR)")
    parser.add_argument("--out", required=True, help="output folder")
    for role in ("boq", "eoq", "eoa", "pad"):
        parser.add_argument(f"--{role}", default=None, help=f"the {role} token string (default: see above)")
    parser.add_argument("--conditions", default=None,
                        help="comma list of NAME=TOKEN (data_io's form, e.g. direct=<|object_ref_start|>) or NAME "
                             "(token <|NAME|>); tiktoken appends these tokens after boq/eoq/eoa/pad "
                             "(default direct,cot,noisy,synth)")
    args = parser.parse_args(argv)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()] if args.conditions else None
    specials = {r: getattr(args, r) for r in ("boq", "eoq", "eoa", "pad") if getattr(args, r)}
    try:
        tokenize(args.inputs, args.tokenizer, args.out, conditions, specials)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
