"""The special tokens and one interface over the two tokenizer kinds (HF tokenizer.json, tiktoken).

A sample's instruction is `boq + condition tokens + text + eoq`, its response `text + eoa`.
`tokenizer_info` (written by tokenize, carried into the sampled metadata.json) records the kind,
where the tokenizer lives, the special token strings and their ids:
  {"kind": "hf" | "tiktoken", "vocab_size": N, "tokenizer_path": PATH or "tiktoken:NAME",
   "boq": "<|boq|>", "eoq": "<|eoq|>", "eoa": "<|eoa|>", "pad": "<|pad|>",
   "condition_mapping": {"direct": "<|direct|>", ...}, "special_token_ids": {"<|boq|>": id, ...}}
"""

import hashlib
import json
from pathlib import Path

from data_io import DataError

BOQ, EOQ, EOA, PAD = "<|boq|>", "<|eoq|>", "<|eoa|>", "<|pad|>"
STRUCTURE_TOKENS = (BOQ, EOQ, EOA, PAD)
DEFAULT_CONDITIONS = ("direct", "cot", "synth")


def condition_token(name: str) -> str:
    return f"<|{name}|>"


class TextTokenizer:
    """Encodes plain text (special-token strings inside text stay text) and knows the special ids."""

    def __init__(self, kind: str, backend, path: str, special_ids: dict[str, int], conditions: list[str],
                 vocab_size: int, fingerprint: str):
        self.kind = kind
        self.backend = backend
        self.path = path
        self.special_ids = special_ids
        self.conditions = conditions
        self.vocab_size = vocab_size
        self.fingerprint = fingerprint  # changes whenever the produced ids could change

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Both backends spread a batch over all cores (Rayon threads / a thread pool).
        if self.kind == "hf":
            return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        return self.backend.encode_ordinary_batch(texts)

    def instruction_ids(self, text_ids: list[int], conditions: list[str]) -> list[int]:
        """How an instruction is framed, in training data and in prompts alike: boq, one token per
        condition, the text, eoq."""
        ids = self.special_ids
        return [ids[BOQ], *(ids[condition_token(c)] for c in conditions), *text_ids, ids[EOQ]]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self.kind == "hf":
            return self.backend.decode(ids, skip_special_tokens=False)
        by_id = {v: k for k, v in self.special_ids.items()}
        out, run = [], []
        for i in ids:
            if i in by_id:
                out.append(self.backend.decode(run) + by_id[i])
                run = []
            else:
                run.append(i)
        return "".join(out) + self.backend.decode(run)

    def info(self) -> dict:
        return {
            "kind": self.kind,
            "vocab_size": self.vocab_size,
            "tokenizer_path": self.path,
            "boq": BOQ, "eoq": EOQ, "eoa": EOA, "pad": PAD,
            "condition_mapping": {c: condition_token(c) for c in self.conditions},
            "special_token_ids": dict(self.special_ids),
        }


def load_tokenizer(spec, conditions: list[str] | None = None) -> TextTokenizer:
    """`spec`: a tokenizer.json (or a directory holding one), "tiktoken:NAME", or a tiktoken.Encoding.

    For HF tokenizers the conditions are the tokenizer's own `<|name|>` special tokens (train_tokenizer
    adds them); for tiktoken the structure tokens and then one token per condition (default
    direct, cot, synth) are appended above the encoding's vocabulary.
    """
    if isinstance(spec, str) and not spec.startswith("tiktoken:"):
        return _load_hf(Path(spec), conditions)
    import tiktoken

    if isinstance(spec, str):
        name = spec.removeprefix("tiktoken:")
        try:
            enc = tiktoken.get_encoding(name)  # offline: served from TIKTOKEN_CACHE_DIR
        except Exception as err:
            raise DataError(f"cannot load tiktoken encoding {name!r} ({err}); offline, point "
                             "TIKTOKEN_CACHE_DIR at a cache that holds it") from None
    else:
        enc = spec
    conditions = list(conditions or DEFAULT_CONDITIONS)
    base = enc.max_token_value + 1
    names = list(STRUCTURE_TOKENS) + [condition_token(c) for c in conditions]
    special_ids = {tok: base + k for k, tok in enumerate(names)}
    fingerprint = hashlib.sha256(json.dumps([enc.name, enc.n_vocab, special_ids]).encode()).hexdigest()
    return TextTokenizer("tiktoken", enc, f"tiktoken:{enc.name}", special_ids, conditions,
                         base + len(names), fingerprint)


def _load_hf(path: Path, conditions: list[str] | None) -> TextTokenizer:
    from tokenizers import Tokenizer

    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{file}: no tokenizer.json there; train one with "
                         "`python -m data_io.train_tokenizer`, or pass --tokenizer tiktoken:NAME")
    tok = Tokenizer.from_file(str(file))
    # A row's text is text: "<|eoa|>" written in it must not become the eoa token (tiktoken's
    # encode_ordinary behaves so too); the structure and condition tokens are inserted by id.
    tok.encode_special_tokens = True
    added = {t.content: i for i, t in tok.get_added_tokens_decoder().items() if t.special}
    missing = [t for t in STRUCTURE_TOKENS if t not in added]
    if missing:
        raise DataError(f"{file}: lacks the special tokens {missing}; train the tokenizer with "
                         "`python -m data_io.train_tokenizer`, which adds them")
    found = [c[2:-2] for c in added if c.startswith("<|") and c.endswith("|>") and c not in STRUCTURE_TOKENS]
    conditions = list(conditions) if conditions else sorted(found, key=lambda c: added[condition_token(c)])
    absent = [c for c in conditions if condition_token(c) not in added]
    if absent:
        raise DataError(f"{file}: has no token for conditions {absent}; retrain with "
                         f"`python -m data_io.train_tokenizer --conditions ...` including them")
    names = list(STRUCTURE_TOKENS) + [condition_token(c) for c in conditions]
    special_ids = {t: added[t] for t in names}
    fingerprint = hashlib.sha256(file.read_bytes() + json.dumps(special_ids).encode()).hexdigest()
    return TextTokenizer("hf", tok, str(file.resolve()), special_ids, conditions,
                         tok.get_vocab_size(with_added_tokens=True), fingerprint)
