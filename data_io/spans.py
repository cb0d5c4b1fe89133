"""Token streams and sample spans on disk: the arrays shared by tokenized folders and sampled epochs.

A folder of spans holds inst_start/inst_len/resp_start/resp_len.npy, one entry per sample, pointing
into a 1-D `tokens.npy` (uint16 when the vocabulary fits, else int32). Written with int64 starts and
int32 lengths; any integer dtype loads (the companion data_io layout included).
"""

from pathlib import Path

import numpy as np

from data_io import DataError

SPAN_FIELDS = ("inst_start", "inst_len", "resp_start", "resp_len")
SPAN_DTYPES = {"inst_start": np.int64, "inst_len": np.int32, "resp_start": np.int64, "resp_len": np.int32}


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def save_spans(folder: Path, spans: dict[str, np.ndarray]) -> None:
    for field in SPAN_FIELDS:
        np.save(folder / f"{field}.npy", np.ascontiguousarray(spans[field], dtype=SPAN_DTYPES[field]))


def _load_array(file: Path, fix: str, mmap: bool = False) -> np.ndarray:
    if not file.is_file():
        raise DataError(f"{file} is missing; {fix}")
    try:
        array = np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)
    except Exception as err:
        raise DataError(f"{file} is not a readable .npy array ({err}); {fix}") from None
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise DataError(f"{file} must be a 1-D integer array, got {array.dtype} of shape {array.shape}; {fix}")
    return array


def load_tokens(file: Path, fix: str) -> np.ndarray:
    """The token stream, memory-mapped."""
    return _load_array(file, fix, mmap=True)


def load_spans(folder: Path, num_tokens: int, fix: str) -> dict[str, np.ndarray]:
    """The four span arrays as int64, checked: equal lengths, non-negative, inside the token stream."""
    spans = {f: _load_array(folder / f"{f}.npy", fix).astype(np.int64) for f in SPAN_FIELDS}
    sizes = {f: len(a) for f, a in spans.items()}
    if len(set(sizes.values())) != 1:
        raise DataError(f"{folder}: span arrays have unequal lengths {sizes}; {fix}")
    for part in ("inst", "resp"):
        start, length = spans[f"{part}_start"], spans[f"{part}_len"]
        bad = np.flatnonzero((start < 0) | (length < 0) | (start + length > num_tokens))
        if len(bad):
            i = int(bad[0])
            raise DataError(f"{folder}: sample {i} has {part} span [{start[i]}, {start[i] + length[i]}) "
                            f"outside tokens.npy (length {num_tokens}); {len(bad)} such samples; {fix}")
    return spans


def check_token_ids(tokens: np.ndarray, vocab_size: int, file: Path, fix: str) -> None:
    """Every id in [0, vocab_size); scanned in chunks so a memory-mapped stream stays unloaded."""
    chunk = 1 << 24
    for lo in range(0, len(tokens), chunk):
        part = tokens[lo:lo + chunk]
        bad = np.flatnonzero((part >= vocab_size) | (part < 0))
        if len(bad):
            i = lo + int(bad[0])
            raise DataError(f"{file}: token {i} has id {int(tokens[i])} >= vocab_size {vocab_size} "
                            f"(or negative); the tokens do not belong to this tokenizer; {fix}")


def length_policy(inst_len: np.ndarray, resp_len: np.ndarray, max_len: int, min_resp_len: int,
                  truncate: bool = True, min_cut_len: int | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
    """The one rule for samples against a length limit of `max_len` tokens len(i) + len(o).

    A sample whose response has fewer than `min_resp_len` tokens, or whose instruction is empty,
    is dropped as short. A longer one has its response's tail cut to fit (`truncate`) and is
    dropped when fewer than `min_cut_len` (default `min_resp_len`) response tokens would remain,
    or is dropped outright. Returns the kept indices, the response lengths after cutting (for
    every sample), and the counts of each outcome."""
    min_cut_len = min_resp_len if min_cut_len is None else min_cut_len
    resp_len = resp_len.copy()
    short = (resp_len < min_resp_len) | (inst_len < 1)
    long = ~short & (inst_len + resp_len > max_len)
    if truncate:
        resp_len[long] = max_len - inst_len[long]
        too_long = long & (resp_len < min_cut_len)
    else:
        too_long = long
    keep = np.flatnonzero(~short & ~too_long)
    counts = {"rows": len(inst_len), "kept": len(keep), "short_response_dropped": int(short.sum()),
              "too_long_dropped": int(too_long.sum()), "truncated": int((long & ~too_long).sum())}
    return keep, resp_len, counts
