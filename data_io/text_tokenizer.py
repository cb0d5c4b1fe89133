"""The special tokens and one interface over the two tokenizer kinds (HF tokenizer.json, tiktoken).

A sample's instruction is `boq + condition tokens + text + eoq`, its response `text + eoa`. Which
strings play boq, eoq, eoa (and pad) and which token each condition gets is recorded once, in
`tokenizer_info` (written by tokenize, carried into the sampled metadata.json and the run
directory); training, generation, evaluation and export all read it from there through
`tokenizer_from_info`:
  {"kind": "hf" | "tiktoken", "vocab_size": N, "tokenizer_path": PATH or "tiktoken:NAME",
   "boq": "<|boq|>", "eoq": "<|eoq|>", "eoa": "<|eoa|>", "pad": "<|pad|>",
   "condition_mapping": {"direct": "<|direct|>", ...}, "special_token_ids": {"<|boq|>": id, ...}}
data_io's Rust tokenizer writes the same keys without kind (hf), pad and special_token_ids, with
its own strings (DATA_IO_SPECIALS); such a tokenizer_info loads as it is.
"""

import hashlib
import json
from pathlib import Path

from data_io import DataError

DEFAULT_CONDITIONS = ("direct", "cot", "noisy", "synth")


def condition_token(name: str) -> str:
    return f"<|{name}|>"


# The strings our train_tokenizer adds, and those of data_io's tokenizer (its defaults, which its
# trained tokenizers and Qwen3's both hold). tokenize picks the first set a tokenizer holds.
DEFAULT_SPECIALS = {"boq": "<|boq|>", "eoq": "<|eoq|>", "eoa": "<|eoa|>", "pad": "<|pad|>"}
DATA_IO_SPECIALS = {"boq": "<|im_start|>", "eoq": "<|im_end|>", "eoa": "<|box_end|>",
                    "condition_mapping": {"direct": "<|object_ref_start|>", "cot": "<|object_ref_end|>",
                                          "noisy": "<|quad_start|>", "synth": "<|quad_end|>"}}
ROLES = ("boq", "eoq", "eoa", "pad")


class TextTokenizer:
    """Encodes plain text (special-token strings inside text stay text) and knows the special ids."""

    def __init__(self, kind: str, backend, path: str, specials: dict, special_ids: dict[str, int],
                 vocab_size: int, fingerprint: str):
        self.kind = kind
        self.backend = backend
        self.path = path
        self.boq, self.eoq, self.eoa = specials["boq"], specials["eoq"], specials["eoa"]
        self.pad = specials.get("pad")  # data_io's tokenizer_info has none
        self.condition_mapping = dict(specials["condition_mapping"])
        self.special_ids = special_ids  # token string -> id, for the roles and the conditions
        self.vocab_size = vocab_size
        self.fingerprint = fingerprint  # changes whenever the produced ids could change

    @property
    def conditions(self) -> list[str]:
        return list(self.condition_mapping)

    @property
    def boq_id(self) -> int:
        return self.special_ids[self.boq]

    @property
    def eoq_id(self) -> int:
        return self.special_ids[self.eoq]

    @property
    def eoa_id(self) -> int:
        return self.special_ids[self.eoa]

    @property
    def pad_id(self) -> int | None:
        return None if self.pad is None else self.special_ids[self.pad]

    def role_of(self, condition: str) -> str | None:
        """The role (boq/eoq/eoa/pad) whose token `condition`'s default token would be, if any."""
        token = condition_token(condition)
        return next((r for r in ROLES if getattr(self, r) == token), None)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        # Both backends spread a batch over all cores (Rayon threads / a thread pool).
        if self.kind == "hf":
            return [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=False)]
        return self.backend.encode_ordinary_batch(texts)

    def instruction_ids(self, text_ids: list[int], conditions: list[str]) -> list[int]:
        """How an instruction is framed, in training data and in prompts alike: boq, one token per
        condition, the text, eoq."""
        return [self.boq_id, *(self.special_ids[self.condition_mapping[c]] for c in conditions), *text_ids,
                self.eoq_id]

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
        roles = {r: getattr(self, r) for r in ROLES if getattr(self, r) is not None}
        return {"kind": self.kind, "vocab_size": self.vocab_size, "tokenizer_path": self.path, **roles,
                "condition_mapping": dict(self.condition_mapping), "special_token_ids": dict(self.special_ids)}


def parse_condition_mapping(items: list[str]) -> dict[str, str]:
    """`name=token` or `name` (token `<|name|>`) per item, as data_io's --conditions takes them."""
    mapping = {}
    for item in items:
        name, _, token = item.partition("=")
        if not name.strip():
            raise DataError(f"condition {item!r}: expected NAME or NAME=TOKEN")
        mapping[name.strip()] = token.strip() or condition_token(name.strip())
    return mapping


def load_tokenizer(spec, specials: dict | None = None) -> TextTokenizer:
    """`spec`: a tokenizer.json (or a directory holding one), "tiktoken:NAME", or a tiktoken.Encoding.

    `specials`: {"boq", "eoq", "eoa", "pad", "condition_mapping"}, the strings that play each role
    (pad optional). Roles not given come, for an HF tokenizer, from the first of DEFAULT_SPECIALS
    (conditions: its other `<|name|>` special tokens) and DATA_IO_SPECIALS that it holds. A tiktoken encoding gets the
    roles and then one token per condition (default DEFAULT_CONDITIONS) appended above its vocabulary.
    """
    if isinstance(spec, str) and not spec.startswith("tiktoken:"):
        return _load_hf(Path(spec), specials)
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
    specials = {**DEFAULT_SPECIALS, **(specials or {})}
    specials.setdefault("condition_mapping", {c: condition_token(c) for c in DEFAULT_CONDITIONS})
    _check_distinct(specials, f"tiktoken:{enc.name}")
    base = enc.max_token_value + 1
    names = [specials[r] for r in ROLES if specials.get(r)] + list(specials["condition_mapping"].values())
    special_ids = {tok: base + k for k, tok in enumerate(names)}
    fingerprint = hashlib.sha256(json.dumps([enc.name, enc.n_vocab, special_ids]).encode()).hexdigest()
    return TextTokenizer("tiktoken", enc, f"tiktoken:{enc.name}", specials, special_ids, base + len(names), fingerprint)


def _check_distinct(specials: dict, where: str) -> None:
    tokens = [specials[r] for r in ROLES if specials.get(r)] + list(specials["condition_mapping"].values())
    repeated = sorted({t for t in tokens if tokens.count(t) > 1})
    if repeated:
        raise DataError(f"{where}: special tokens {repeated} play more than one role (boq/eoq/eoa/pad or a "
                        "condition); give each role its own token")


def _load_hf(path: Path, specials: dict | None) -> TextTokenizer:
    from tokenizers import Tokenizer

    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise DataError(f"{file}: no tokenizer.json there; train one with "
                         "`python -m data_io.train_tokenizer`, or pass --tokenizer tiktoken:NAME")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as err:  # the library's own parse error, e.g. "EOF while parsing"
        raise DataError(f"{file}: not a tokenizer.json the tokenizers library can read ({err}); train one with "
                        "`python -m data_io.train_tokenizer`") from None
    # A row's text is text: "<|eoa|>" written in it must not become the eoa token (tiktoken's
    # encode_ordinary behaves so too); the structure and condition tokens are inserted by id.
    tok.encode_special_tokens = True
    decoder = tok.get_added_tokens_decoder()
    added = {t.content: i for i, t in decoder.items()}
    specials = dict(specials or {})
    if not all(r in specials for r in ("boq", "eoq", "eoa")):  # the roles not given: a set it holds
        preset = next((s for s in (DEFAULT_SPECIALS, DATA_IO_SPECIALS)
                       if all(s[r] in added for r in ROLES if r in s)), None)
        if preset is None:
            raise DataError(f"{file}: holds neither our special tokens {list(DEFAULT_SPECIALS.values())} nor "
                            f"data_io's {[DATA_IO_SPECIALS[r] for r in ROLES if r in DATA_IO_SPECIALS]}; train the "
                            "tokenizer with `python -m data_io.train_tokenizer`, or name its tokens with "
                            "--boq/--eoq/--eoa/--conditions")
        specials = {**preset, **specials}
    if "condition_mapping" not in specials:  # its `<|name|>` special tokens, in id order
        roles = {specials[r] for r in ROLES if specials.get(r)}
        found = sorted((i, t.content) for i, t in decoder.items()
                       if t.special and t.content.startswith("<|") and t.content.endswith("|>") and t.content not in roles)
        specials["condition_mapping"] = {t[2:-2]: t for _, t in found}
    _check_distinct(specials, str(file))
    names = [specials[r] for r in ROLES if specials.get(r)] + list(specials["condition_mapping"].values())
    missing = [t for t in names if t not in added]
    if missing:
        raise DataError(f"{file}: lacks the special tokens {missing} that tokenizer_info names; train the "
                        "tokenizer with them (`python -m data_io.train_tokenizer --special-tokens ...`) or map "
                        "the roles and conditions to tokens it has")
    special_ids = {t: added[t] for t in names}
    fingerprint = hashlib.sha256(file.read_bytes() + json.dumps(special_ids).encode()).hexdigest()
    return TextTokenizer("hf", tok, str(file.resolve()), specials, special_ids,
                         tok.get_vocab_size(with_added_tokens=True), fingerprint)


def tokenizer_file(info: dict, base: Path) -> Path | None:
    """The tokenizer file `info` points to: its tokenizer_path relative to `base` (the folder the
    tokenizer_info belongs to; an absolute path stays itself), then from the working directory,
    then base/tokenizer.json; None when none exists (e.g. a hub name) or for tiktoken."""
    path = str(info.get("tokenizer_path", ""))
    if info.get("kind", "hf") != "hf":
        return None
    for candidate in (base / path, Path(path), base / "tokenizer.json"):
        if path and candidate.is_dir():
            candidate = candidate / "tokenizer.json"
        if candidate.is_file():
            return candidate
    return None


def tokenizer_from_info(info: dict, base: Path, override: str | None = None) -> TextTokenizer:
    """The tokenizer a tokenizer_info describes, with its special-token strings; `base` is the
    folder the tokenizer_info lives in, `override` a tokenizer file to use instead of its own."""
    specials = {k: info[k] for k in (*ROLES, "condition_mapping") if info.get(k) is not None}
    missing = [k for k in ("boq", "eoq", "eoa", "condition_mapping") if k not in specials]
    if missing:
        raise DataError(f"tokenizer_info in {base} lacks {missing}; it needs boq, eoq, eoa and condition_mapping")
    if override is not None:
        return load_tokenizer(override, specials)
    if info.get("kind", "hf") == "tiktoken":
        tok = load_tokenizer(info["tokenizer_path"], specials)
    else:
        file = tokenizer_file(info, base)
        if file is None:
            raise DataError(f"tokenizer_path {info.get('tokenizer_path')!r} of the tokenizer_info in {base} is "
                            "not a file; put the tokenizer.json there or pass the tokenizer explicitly")
        tok = load_tokenizer(str(file), specials)
    recorded = info.get("special_token_ids")
    if recorded is not None and recorded != tok.special_ids:
        raise DataError(f"the tokenizer at {tok.path} gives the special tokens ids {tok.special_ids}, but the "
                        f"tokenizer_info in {base} recorded {recorded}; it is not the tokenizer the data was made with")
    return tok
