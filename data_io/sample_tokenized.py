"""Sample tokenized folders into the training dataset of docs/DESIGN.md, "Data format" (OmegaConf key=value CLI).

    python -m data_io.sample_tokenized tokenized_path=tokenized/ output_path=/dev/shm/sampled \\
        epochs=4 seed=0 context_size=4096 min_resp_length=2 prefix_config_path=rules.yaml

Keys:
  tokenized_path      output folder of `python -m data_io.tokenize` (required)
  output_path         sampled dataset folder (default /dev/shm/sampled)
  epochs              epoch_{e}/ folders to write, each its own order (default 4)
  seed                all randomness derives from it: equal seeds give byte-identical output, so every
                      node can sample its own copy (default 0)
  context_size        S = the most tokens len(i) + len(o) a sample may have; the model sees S - 1
                      positions after the autoregressive shift (default 4096)
  min_resp_length     fewest response tokens, eoa included; shorter responses are dropped (default 2,
                      i.e. at least one text token: a response of eoa alone has nothing causal to train)
  prefix_config_path  YAML/JSON list of rules, the first whose `prefix` starts the source name (its
                      path below tokenized_path, e.g. "math/gsm8k.jsonl") applies:
                        - prefix: "math/"
                          max_per_file: 50000      # keep a random subset (fixed across epochs); null: all
                          long_context: truncate   # drop (default) | truncate the response to fit S
                          repeat: 2.5              # copies per epoch; the fraction is a fresh random
                                                   # subset each epoch (default 1)
                      Sources matching no rule: all samples, long_context drop, repeat 1.

Writes metadata.json {"tokenizer_info", "max_seq_len": S, "total_length": T (tokens len(i)+len(o)
summed over an epoch, mean over epochs), "epochs", "seed"}, tokens.npy holding the kept samples
only, epoch_{e}/{inst_start,inst_len,resp_start,resp_len}.npy in that epoch's shuffled order, and
tokenizer.json (HF tokenizers). Prints coverage analytics as a markdown table.
"""

import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import MISSING, OmegaConf
from tqdm import tqdm

from data_io import DataError
from data_io.spans import check_token_ids, load_spans, load_tokens, save_spans, token_dtype

LONG_CONTEXT_POLICIES = ("drop", "truncate")
FIX = "re-run `python -m data_io.tokenize` into a fresh output folder"


@dataclass
class SampleConfig:
    tokenized_path: str = MISSING
    output_path: str = "/dev/shm/sampled"
    epochs: int = 4
    seed: int = 0
    context_size: int = 4096
    min_resp_length: int = 2
    prefix_config_path: str | None = None


@dataclass
class Rule:
    prefix: str = ""
    max_per_file: int | None = None
    long_context: str = "drop"
    repeat: float = 1.0


def load_rules(path: str | None) -> list[Rule]:
    if path is None:
        return []
    if not Path(path).is_file():
        raise DataError(f"prefix_config_path {path}: no such file")
    raw = OmegaConf.to_container(OmegaConf.load(path))
    if not isinstance(raw, list):
        raise DataError(f"{path}: must be a list of rules like `- prefix: math/`, got {type(raw).__name__}")
    rules = []
    for k, item in enumerate(raw):
        unknown = set(item) - set(Rule.__dataclass_fields__) if isinstance(item, dict) else None
        if unknown is None or unknown or "prefix" not in item:
            raise DataError(f"{path}: rule {k} must be a mapping with `prefix` and optionally "
                            f"max_per_file/long_context/repeat, got {item!r}")
        rule = Rule(**item)
        if rule.long_context not in LONG_CONTEXT_POLICIES:
            raise DataError(f"{path}: rule {k}: long_context must be one of {LONG_CONTEXT_POLICIES}, got {rule.long_context!r}")
        if rule.repeat < 0 or (rule.max_per_file is not None and rule.max_per_file < 0):
            raise DataError(f"{path}: rule {k}: repeat and max_per_file must be >= 0")
        rules.append(rule)
    return rules


def find_tokenized(root: Path) -> list[tuple[Path, str]]:
    """(folder, name) of every per-source folder (one holding tokens.npy), sorted by name."""
    if not (root / "tokenizer_info.json").is_file():
        raise DataError(f"{root / 'tokenizer_info.json'} is missing; is {root} the output folder of "
                        "`python -m data_io.tokenize`?")
    folders = [(f.parent, f.parent.relative_to(root).as_posix()) for f in root.rglob("tokens.npy")
               if not f.parent.name.endswith(".partial")]
    if not folders:
        raise DataError(f"{root}: no tokenized source folders (with tokens.npy); {FIX}")
    return sorted(folders, key=lambda fn: fn[1])


def sample(cfg: SampleConfig) -> dict:
    """Writes the sampled dataset; returns the analytics rows (one dict per source) and totals."""
    if cfg.context_size < 3 or cfg.min_resp_length < 2 or cfg.epochs < 1:
        raise DataError("need context_size >= 3, min_resp_length >= 2 (a response of eoa alone trains "
                        f"nothing), epochs >= 1; got {cfg.context_size}, {cfg.min_resp_length}, {cfg.epochs}")
    root, out = Path(cfg.tokenized_path), Path(cfg.output_path)
    rules = load_rules(cfg.prefix_config_path)
    folders = find_tokenized(root)
    info = json.loads((root / "tokenizer_info.json").read_text())
    vocab_size = info["vocab_size"]
    S = cfg.context_size

    # Pass 1: choose the kept samples of each source (and their possibly truncated response lengths).
    plans, rows = [], []
    for k, (folder, name) in enumerate(tqdm(folders, desc="checking sources", unit="file")):
        tokens = load_tokens(folder / "tokens.npy", FIX)
        check_token_ids(tokens, vocab_size, folder / "tokens.npy", FIX)
        spans = load_spans(folder, len(tokens), FIX)
        rule = next((r for r in rules if name.startswith(r.prefix)), Rule())
        inst_len, resp_len = spans["inst_len"], spans["resp_len"].copy()
        empty = resp_len < cfg.min_resp_length
        long = ~empty & (inst_len + resp_len > S)
        if rule.long_context == "truncate":  # keep the instruction, cut the response's tail
            resp_len[long] = S - inst_len[long]
            too_long = long & (resp_len < cfg.min_resp_length)
        else:
            too_long = long
        kept = np.flatnonzero(~empty & ~too_long)
        capped = 0
        if rule.max_per_file is not None and len(kept) > rule.max_per_file:
            capped = len(kept) - rule.max_per_file
            kept = np.sort(np.random.default_rng([cfg.seed, 1, k]).choice(kept, rule.max_per_file, replace=False))
        plans.append((folder, spans["inst_start"][kept], inst_len[kept], spans["resp_start"][kept],
                      resp_len[kept], rule.repeat))
        rows.append({"source": name, "rule": rule.prefix or "(default)", "rows": len(inst_len),
                     "empty_response": int(empty.sum()), "too_long_dropped": int(too_long.sum()),
                     "truncated": int((long & ~too_long).sum()), "over_max_per_file": capped,
                     "kept": len(kept), "repeat": rule.repeat})

    if not any(r["kept"] * r["repeat"] for r in rows):
        dropped = sum(r["empty_response"] + r["too_long_dropped"] + r["over_max_per_file"] for r in rows)
        raise DataError(f"{cfg.tokenized_path}: no sample is kept ({dropped} dropped: responses under "
                        f"min_resp_length={cfg.min_resp_length} tokens, or longer than context_size={S}, or "
                        "capped or repeat 0 by the rules); raise context_size or lower min_resp_length")

    # Pass 2: copy the kept samples into one stream, instruction then response.
    for stale in [out / "metadata.json", out / "tokens.npy", out / "tokenizer.json", *out.glob("epoch_*")]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    lengths = np.concatenate([np.stack([p[2], p[4]]) for p in plans], axis=1)  # [2, samples]
    stream = np.lib.format.open_memmap(out / "tokens.npy", mode="w+", dtype=token_dtype(vocab_size),
                                       shape=(int(lengths.sum()),))
    pos = 0
    for folder, inst_start, inst_len, resp_start, resp_len, _ in tqdm(plans, desc="copying samples", unit="file"):
        tokens = load_tokens(folder / "tokens.npy", FIX)
        both = np.stack([inst_len, resp_len], axis=1).ravel()
        gathered = tokens[_ranges(np.stack([inst_start, resp_start], axis=1).ravel(), both)]
        stream[pos:pos + len(gathered)] = gathered
        pos += len(gathered)
    stream.flush()
    del stream
    sample_start = np.concatenate([[0], np.cumsum(lengths.sum(0))[:-1]])
    inst_len, resp_len = lengths
    source_of = np.repeat(np.arange(len(plans)), [len(p[1]) for p in plans])
    repeat = np.array([p[5] for p in plans], dtype=np.float64)[source_of]

    # Per epoch: whole copies plus a fresh random subset for the fractional part, then a shuffle.
    per_epoch_samples = np.zeros(len(plans), np.int64)
    per_epoch_tokens = np.zeros(len(plans), np.int64)
    for epoch in range(cfg.epochs):
        rng = np.random.default_rng([cfg.seed, 0, epoch])
        copies = np.floor(repeat).astype(np.int64) + (rng.random(len(repeat)) < repeat - np.floor(repeat))
        order = rng.permutation(np.repeat(np.arange(len(repeat)), copies))
        folder = out / f"epoch_{epoch}"
        folder.mkdir()
        save_spans(folder, {"inst_start": sample_start[order], "inst_len": inst_len[order],
                            "resp_start": sample_start[order] + inst_len[order], "resp_len": resp_len[order]})
        per_epoch_samples += np.bincount(source_of[order], minlength=len(plans))
        per_epoch_tokens += np.bincount(source_of[order], weights=(inst_len + resp_len)[order],
                                        minlength=len(plans)).astype(np.int64)

    info = dict(info)
    if info.get("kind", "hf") == "hf":
        shutil.copyfile(Path(info["tokenizer_path"]) if Path(info["tokenizer_path"]).is_file()
                        else root / "tokenizer.json", out / "tokenizer.json")
        info["tokenizer_path"] = str((out / "tokenizer.json").resolve())
    total_length = int(round(per_epoch_tokens.sum() / cfg.epochs))
    metadata = {"tokenizer_info": info, "max_seq_len": S, "total_length": total_length,
                "epochs": cfg.epochs, "seed": cfg.seed}
    (out / "metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")

    for row, n, t in zip(rows, per_epoch_samples, per_epoch_tokens):
        row["samples_per_epoch"] = n / cfg.epochs
        row["tokens_per_epoch"] = t / cfg.epochs
    print(_markdown(rows, cfg, total_length))
    return {"sources": rows, "total_length": total_length}


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), vectorized."""
    ends = np.cumsum(lengths)
    offsets = np.repeat(starts - (ends - lengths), lengths)
    return np.arange(int(ends[-1]) if len(ends) else 0) + offsets


def _markdown(rows: list[dict], cfg: SampleConfig, total_length: int) -> str:
    cols = ["source", "rule", "rows", "empty_response", "too_long_dropped", "truncated",
            "over_max_per_file", "kept", "repeat", "samples_per_epoch", "tokens_per_epoch", "token_share"]
    total = {"source": "**total**", "rule": ""}
    for c in cols[2:]:
        total[c] = sum(r[c] for r in rows) if c not in ("repeat", "token_share") else ""
    for r in rows + [total]:
        r["token_share"] = f"{100 * r['tokens_per_epoch'] / max(total_length, 1):.1f}%"

    def cell(v):
        return f"{v:,.1f}" if isinstance(v, float) else f"{v:,}" if isinstance(v, int) else str(v)

    lines = [f"## Sampled dataset {cfg.output_path}", "",
             f"seed {cfg.seed}, {cfg.epochs} epochs, context_size {cfg.context_size}, "
             f"min_resp_length {cfg.min_resp_length}; per-epoch figures are means over epochs", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for r in rows + [total]]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    bad = [a for a in argv if "=" not in a]
    if bad:
        raise SystemExit(f"error: arguments are key=value (e.g. tokenized_path=DIR), got {bad}; see --help")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(SampleConfig), OmegaConf.from_dotlist(argv))
        cfg = SampleConfig(**OmegaConf.to_container(cfg, throw_on_missing=True))
    except Exception as err:
        raise SystemExit(f"error: bad arguments ({err}); see --help") from None
    try:
        sample(cfg)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None


if __name__ == "__main__":
    main()
