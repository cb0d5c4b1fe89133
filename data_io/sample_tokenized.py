"""Stratified sampling of tokenized folders into the training dataset, with data_io's rules.

    python -m data_io.sample_tokenized tokenized_path=tokenized/ output_path=/dev/shm/sampled \\
        epochs=4 prefix_config_path=prefix_config.yaml > show_analytics.md

Keys (OmegaConf key=value, as sapientinc/data_io's sample_tokenized.py takes them):
  tokenized_path      output folder of `python -m data_io.tokenize` (or of data_io's Rust tokenizer):
                      one folder per source file, named by its path with `/` flattened to `__`
  output_path         sampled dataset folder (default /dev/shm/sampled)
  prefix_config_path  YAML list of rules (default: none, every source with the default rule). The
                      first rule whose `prefix` starts a source's folder name applies; a source that
                      more rules match gets a warning:
                        - prefix: "SYNTH__"
                          max_per_file: 20000      # rows drawn per epoch (default: all rows)
                          long_context: truncate   # truncate (default) | drop
                          repeat: 10               # draws per epoch = repeat x min(max_per_file, rows)
  seed                all randomness derives from it: equal seeds give byte-identical output, so every
                      node can sample its own copy (default 0)
  epochs              epoch_{e}/ folders to write (default 10, as data_io; HRM-Text trains 4)
  context_size        the most tokens len(i) + len(o) a row may keep: 4096 + 1 for the autoregressive
                      shift (default 4097)
  min_resp_length     rows whose response (eoa included) is shorter are dropped (default 2: one text
                      token and eoa)

Per source, as data_io does: rows with a short response are dropped; a row longer than context_size
is dropped under `drop`, and under `truncate` keeps its instruction and as much of the response as
fits (dropped only when the instruction alone fills the context; an instruction one token short
keeps a 1-token response). Each epoch then draws its rows from a per-source permutation that
carries over between epochs and is redrawn when used up, so a capped source shows new rows each
epoch until all were seen; the epoch is shuffled as a whole. For the same tokenized folders and seed
the epochs hold the same rows in the same order as data_io's.

Writes tokens.npy (every source's tokens, in folder-name order), epoch_{e}/{inst_start,inst_len,
resp_start,resp_len}.npy, metadata.json {"tokenizer_info", "max_seq_len": context_size,
"total_length": tokens len(i) + len(o) per epoch averaged over epochs, "epochs", "seed"}, a copy of
the tokenizer when it can be found, and prints the coverage report (markdown) on stdout: per
category (the folder name up to its first `__`) and per source.
"""

import json
import shutil
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import yaml
from omegaconf import MISSING, OmegaConf
from tqdm import tqdm

from data_io import DataError
from data_io.outputs import Manifest, check_apart
from data_io.spans import check_token_ids, length_policy, load_spans, load_tokens, save_spans, token_dtype
from data_io.text_tokenizer import tokenizer_file

LONG_CONTEXT_POLICIES = ("truncate", "drop")
FIX = "re-run `python -m data_io.tokenize` into a fresh output folder"


@dataclass
class SampleConfig:
    tokenized_path: str = MISSING
    output_path: str = "/dev/shm/sampled"
    prefix_config_path: str | None = None
    seed: int = 0
    epochs: int = 10
    context_size: int = 4096 + 1
    min_resp_length: int = 2


@dataclass
class Rule:
    prefix: str = ""
    max_per_file: int | None = None
    long_context: str = "truncate"
    repeat: int = 1


def load_rules(path: str | None) -> list[Rule]:
    if path is None:
        return []
    if not Path(path).is_file():
        raise DataError(f"prefix_config_path {path}: no such file")
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(raw, list):
        raise DataError(f"{path}: must be a list of rules like `- prefix: SYNTH__`, got {type(raw).__name__}")
    rules = []
    for k, item in enumerate(raw):
        if not isinstance(item, dict) or "prefix" not in item or set(item) - {f.name for f in fields(Rule)}:
            raise DataError(f"{path}: rule {k} must be a mapping with `prefix` and optionally "
                            f"max_per_file/long_context/repeat, got {item!r}")
        rule = Rule(**item)
        if rule.long_context not in LONG_CONTEXT_POLICIES:
            raise DataError(f"{path}: rule {k}: long_context must be one of {LONG_CONTEXT_POLICIES}, got {rule.long_context!r}")
        for key in ("max_per_file", "repeat"):
            value = getattr(rule, key)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise DataError(f"{path}: rule {k}: {key} must be a whole number >= 0, got {value!r}")
        rules.append(rule)
    return rules


def match_rule(name: str, rules: list[Rule]) -> Rule:
    """The first rule whose prefix starts `name` (the default rule when none does); warns when a
    later rule matches too, as data_io does."""
    matches = [r for r in rules if name.startswith(r.prefix)]
    if len(matches) > 1:
        print(f"warning: {name} matches {len(matches)} prefixes ({', '.join(repr(r.prefix) for r in matches)}); "
              f"the first, {matches[0].prefix!r}, applies", file=sys.stderr)
    return matches[0] if matches else Rule()


def find_tokenized(root: Path) -> list[tuple[Path, str]]:
    """(folder, name) of every source folder (a child of `root` holding tokens.npy), sorted by name."""
    if not (root / "tokenizer_info.json").is_file():
        raise DataError(f"{root / 'tokenizer_info.json'} is missing; is {root} the output folder of "
                        "`python -m data_io.tokenize`?")
    folders = []
    for child in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.endswith(".partial")):
        if (child / "tokens.npy").is_file():
            folders.append((child, child.name))
        elif any(child.rglob("tokens.npy")):
            raise DataError(f"{child}: holds nested tokenized folders (an older layout); source folders are "
                            f"named by their path with `/` flattened to `__`; {FIX}")
    if not folders:
        raise DataError(f"{root}: no tokenized source folders (with tokens.npy); {FIX}")
    return folders


def truncate_and_filter(spans: dict[str, np.ndarray], rule: Rule, cfg: SampleConfig) -> tuple[np.ndarray, np.ndarray, dict]:
    """(kept row indices, their response lengths after truncation, drop/truncation counts). As
    data_io does, a truncated response may keep a single token (its last, eoa, is cut away)."""
    keep, resp_len, counts = length_policy(spans["inst_len"], spans["resp_len"], cfg.context_size, cfg.min_resp_length,
                                           truncate=rule.long_context == "truncate", min_cut_len=1)
    del counts["kept"]
    return keep, resp_len[keep], counts


@dataclass
class Source:
    name: str
    rule: Rule
    offset: int  # where its tokens start in the output tokens.npy
    inst_start: np.ndarray  # kept rows, in the output stream
    inst_len: np.ndarray
    resp_start: np.ndarray
    resp_len: np.ndarray
    counts: dict
    perm: np.ndarray | None = None  # the permutation being drawn from, carried over epochs
    cursor: int = 0

    def draw(self, rng: np.random.Generator, count: int) -> np.ndarray:
        """The next `count` rows of the rotation; a used-up permutation is replaced by a fresh one."""
        taken = []
        while count > 0:
            if self.perm is None or self.cursor >= len(self.perm):
                self.perm, self.cursor = rng.permutation(len(self.inst_len)), 0
            take = min(count, len(self.perm) - self.cursor)
            taken.append(self.perm[self.cursor:self.cursor + take])
            self.cursor += take
            count -= take
        return np.concatenate(taken) if taken else np.zeros(0, np.int64)


def sample(cfg: SampleConfig) -> dict:
    """Writes the sampled dataset; returns {"sources": one report row per source, "total_length"}."""
    if cfg.context_size < 2 or cfg.min_resp_length < 1 or cfg.epochs < 1:
        raise DataError("need context_size >= 2, min_resp_length >= 1 and epochs >= 1; got "
                        f"{cfg.context_size}, {cfg.min_resp_length}, {cfg.epochs}")
    root, out = Path(cfg.tokenized_path), Path(cfg.output_path)
    rules = load_rules(cfg.prefix_config_path)
    folders = find_tokenized(root)
    check_apart(out, [root], "output_path")
    info = json.loads((root / "tokenizer_info.json").read_text())
    vocab_size = info["vocab_size"]

    sources, offset = [], 0
    for folder, name in tqdm(folders, desc="reading sources", unit="file"):
        tokens = load_tokens(folder / "tokens.npy", FIX)
        check_token_ids(tokens, vocab_size, folder / "tokens.npy", FIX)
        spans = load_spans(folder, len(tokens), FIX)
        rule = match_rule(name, rules)
        keep, resp_len, counts = truncate_and_filter(spans, rule, cfg)
        sources.append(Source(name, rule, offset, spans["inst_start"][keep] + offset, spans["inst_len"][keep],
                              spans["resp_start"][keep] + offset, resp_len, counts))
        offset += len(tokens)

    draws = [s.rule.repeat * (len(s.inst_len) if s.rule.max_per_file is None else min(s.rule.max_per_file, len(s.inst_len)))
             for s in sources]
    if not any(draws):
        dropped = sum(s.counts["short_response_dropped"] + s.counts["too_long_dropped"] for s in sources)
        raise DataError(f"{cfg.tokenized_path}: no row is drawn ({dropped} dropped: responses under "
                        f"min_resp_length={cfg.min_resp_length} tokens or longer than context_size="
                        f"{cfg.context_size}; the others capped to 0 or repeat 0 by the rules); raise "
                        "context_size or lower min_resp_length")

    # The previous sampling's output is replaced; anything else in the folder is left alone.
    manifest = Manifest(out, "sample_tokenized")
    manifest.check_free(["metadata.json", "tokens.npy", "tokenizer.json", *(f"epoch_{e}" for e in range(cfg.epochs))])
    manifest.prune(keep=())
    stream = np.lib.format.open_memmap(manifest.claim("tokens.npy"), mode="w+", dtype=token_dtype(vocab_size), shape=(offset,))
    for (folder, _), source in zip(tqdm(folders, desc="copying tokens", unit="file"), sources):
        tokens = load_tokens(folder / "tokens.npy", FIX)
        stream[source.offset:source.offset + len(tokens)] = tokens
    stream.flush()
    del stream

    rng = np.random.Generator(np.random.Philox(seed=cfg.seed))
    coverage = [np.zeros(len(s.inst_len), np.int64) for s in sources]
    epoch_tokens = np.zeros((cfg.epochs, len(sources)), np.int64)
    for epoch in tqdm(range(cfg.epochs), desc="drawing epochs", unit="epoch"):
        parts = {f: [] for f in ("inst_start", "inst_len", "resp_start", "resp_len")}
        for k, (source, count) in enumerate(zip(sources, draws)):
            rows = source.draw(rng, count)
            np.add.at(coverage[k], rows, 1)
            epoch_tokens[epoch, k] = int((source.inst_len[rows] + source.resp_len[rows]).sum())
            for f in parts:
                parts[f].append(getattr(source, f)[rows])
        epoch_spans = {f: np.concatenate(v) for f, v in parts.items()}
        order = rng.permutation(len(epoch_spans["inst_len"]))
        folder = manifest.claim(f"epoch_{epoch}")
        folder.mkdir()
        save_spans(folder, {f: v[order] for f, v in epoch_spans.items()})

    info = dict(info)
    found = tokenizer_file(info, root)
    if found is not None:
        shutil.copyfile(found, manifest.claim("tokenizer.json"))
        info["tokenizer_path"] = str((out / "tokenizer.json").resolve())
    else:
        print(f"warning: tokenizer_path {info.get('tokenizer_path')!r} of {root / 'tokenizer_info.json'} is "
              "not a file here, so it is not copied; generation, evaluation and export will need it",
              file=sys.stderr)
    total_length = int(round(epoch_tokens.sum() / cfg.epochs))
    metadata = {"tokenizer_info": info, "max_seq_len": cfg.context_size, "total_length": total_length,
                "epochs": cfg.epochs, "seed": cfg.seed}
    manifest.claim("metadata.json").write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")

    rows = []
    for source, count, cov, tokens in zip(sources, draws, coverage, epoch_tokens.T):
        lengths = source.inst_len + source.resp_len
        rows.append({"source": source.name, "rule": source.rule.prefix or "(none)", **source.counts,
                     "kept": len(lengths), "kept_tokens": int(lengths.sum()), "rows_per_epoch": count,
                     "tokens_per_epoch": tokens.tolist(), "unique_rows": int((cov > 0).sum()),
                     "unique_tokens": int(lengths[cov > 0].sum()),
                     "sampled_inst_tokens": int((source.inst_len * cov).sum()),
                     "sampled_resp_tokens": int((source.resp_len * cov).sum())})
    print(coverage_report(rows, cfg, total_length))
    return {"sources": rows, "total_length": total_length}


def coverage_report(rows: list[dict], cfg: SampleConfig, total_length: int) -> str:
    """Markdown: per category (folder name up to the first `__`, plus GLOBAL) and per source, the
    kept rows and tokens, what was drawn over all epochs and how much of it was unique."""
    def total(group: list[dict]) -> dict:
        summed = {k: sum(r[k] for r in group) for k in ("rows", "short_response_dropped", "too_long_dropped",
                  "truncated", "kept", "kept_tokens", "rows_per_epoch", "unique_rows", "unique_tokens",
                  "sampled_inst_tokens", "sampled_resp_tokens")}
        return {**summed, "sampled_tokens": summed["sampled_inst_tokens"] + summed["sampled_resp_tokens"]}

    for r in rows:
        r["sampled_tokens"] = r["sampled_inst_tokens"] + r["sampled_resp_tokens"]
    everything = total(rows)
    categories = {"GLOBAL": everything}
    for name in sorted({r["source"].split("__")[0] for r in rows}):
        categories[name] = total([r for r in rows if r["source"].split("__")[0] == name])

    def pct(n, of):
        return f"{n:,} ({100 * n / max(of, 1):.1f}%)"

    def table(title: str, named: dict[str, dict], with_rule: bool) -> list[str]:
        head = ["name", *(["rule"] if with_rule else []), "rows", "short dropped", "long dropped", "truncated",
                "kept rows", "kept tokens", "rows/epoch", "sampled tokens (share)", "sampled inst / resp tokens",
                "unique rows (of kept)", "unique tokens (of kept)"]
        lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for name, s in named.items():
            cells = [f"**{name}**", *([s["rule"]] if with_rule else []), f"{s['rows']:,}",
                     f"{s['short_response_dropped']:,}", f"{s['too_long_dropped']:,}", f"{s['truncated']:,}",
                     f"{s['kept']:,}", f"{s['kept_tokens']:,}", f"{s['rows_per_epoch']:,}",
                     pct(s["sampled_tokens"], everything["sampled_tokens"]),
                     f"{s['sampled_inst_tokens']:,} / {s['sampled_resp_tokens']:,}",
                     pct(s["unique_rows"], s["kept"]), pct(s["unique_tokens"], s["kept_tokens"])]
            lines.append("| " + " | ".join(cells) + " |")
        return lines + [""]

    lines = [f"## Sampled dataset {cfg.output_path}", "",
             f"seed {cfg.seed}, {cfg.epochs} epochs, context_size {cfg.context_size}, min_resp_length "
             f"{cfg.min_resp_length}, total_length {total_length:,} tokens per epoch; sampled and unique "
             "figures are over all epochs", ""]
    lines += table("Category coverage", categories, with_rule=False)
    lines += table("Source coverage", {r["source"]: r for r in rows}, with_rule=True)
    lines += [f"**Unique rows sampled:** {pct(everything['unique_rows'], everything['kept'])} of the kept rows; "
              f"**unique tokens:** {pct(everything['unique_tokens'], everything['kept_tokens'])}"]
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
