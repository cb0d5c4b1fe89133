"""Stratified sampling against data_io's rules, on a fixture corpus with hand-computed expectations.

The corpus is digits only: the tokenizer's pre-split gives every digit its own token, so an
instruction of k digits is k + 3 tokens (boq, the condition, eoq) and a response of m digits m + 1
(eoa). data_io's rules (sapientinc/data_io sample_tokenized.py) at context_size C = 16:
  - rows whose response (eoa included) is under min_resp_length = 2 tokens are dropped;
  - room = C - min(inst, C); `drop` keeps a row only if resp <= room; `truncate` (the default, also
    for sources matching no rule) keeps it if room >= 1 and cuts the response to room tokens;
  - per epoch a source gives repeat x min(max_per_file, kept) rows, drawn from a permutation that
    carries over epochs (a fresh one when used up), so the first `kept` draws are all distinct;
  - the first matching prefix applies; more matches warn; folder names flatten `/` to `__`.
"""

import json

import numpy as np
import pytest

from data_io.sample_tokenized import SampleConfig, sample
from data_io.tokenize import tokenize
from data_io.train_tokenizer import train_tokenizer

C, EPOCHS = 16, 3
RULES = """\
- prefix: "SYNTH__"
  max_per_file: 3
- prefix: "flan__cot_"
  repeat: 2
- prefix: "flan__"
  max_per_file: 2
  long_context: drop
- prefix: "gsm8k_train.jsonl"
  repeat: 3
"""


def digits(row_id: int, k: int) -> str:
    return f"{row_id:0{k}d}"


# (source file, [(instruction digits k, response digits m), ...]); row ids are unique corpus-wide.
CORPUS = {
    "SYNTH/part1.jsonl": [(3, 2)] * 8,                      # 9 tokens each; capped at 3 a epoch
    "flan/cot_a.jsonl": [(3, 2), (5, 12)],                  # 9; 8 + 13 = 21 > 16: cut to 8 + 8
    "flan/other.jsonl": [(3, 2)] * 3 + [(5, 12)],           # drop: the 21-token row goes
    "misc.jsonl": [(3, 2),     # 9 tokens
                   (12, 3),    # inst 15 = C - 1: kept with a 1-token response
                   (13, 2),    # inst 16 = C: no room, dropped
                   (3, 9),     # 6 + 10 = 16: at the edge, kept whole
                   (3, 0),     # response eoa only: dropped (short)
                   (3, 20)],   # 6 + 21: cut to 6 + 10
    "gsm8k_train.jsonl": [(3, 2)] * 2,                      # repeat 3
}
# Hand-computed from the rules above: kept rows with their tokens after truncation.
KEPT_TOKENS = {
    "SYNTH__part1.jsonl": [9] * 8,
    "flan__cot_a.jsonl": [9, 16],
    "flan__other.jsonl": [9, 9, 9],
    "misc.jsonl": [9, 16, 16, 16],
    "gsm8k_train.jsonl": [9, 9],
}
ROWS_PER_EPOCH = {"SYNTH__part1.jsonl": 3, "flan__cot_a.jsonl": 4, "flan__other.jsonl": 2, "misc.jsonl": 4,
                  "gsm8k_train.jsonl": 6}
TOKENS_PER_EPOCH = {"SYNTH__part1.jsonl": 27, "flan__cot_a.jsonl": 50, "flan__other.jsonl": 18,
                    "misc.jsonl": 57, "gsm8k_train.jsonl": 54}
COUNTS = {  # (short dropped, too long dropped, truncated)
    "SYNTH__part1.jsonl": (0, 0, 0), "flan__cot_a.jsonl": (0, 0, 1), "flan__other.jsonl": (0, 1, 0),
    "misc.jsonl": (1, 1, 2), "gsm8k_train.jsonl": (0, 0, 0),
}


@pytest.fixture(scope="module")
def sampled(tmp_path_factory):
    base = tmp_path_factory.mktemp("sampling")
    rows_by_id = {}
    next_id = 100
    for name, shapes in CORPUS.items():
        (base / "corpus" / name).parent.mkdir(parents=True, exist_ok=True)
        lines = []
        for k, m in shapes:
            instruction = digits(next_id, k)
            rows_by_id[instruction] = (name.replace("/", "__"), len(lines))
            lines.append(json.dumps({"instruction": instruction, "response": "7" * m, "condition": "direct"}))
            next_id += 1
        (base / "corpus" / name).write_text("\n".join(lines) + "\n")
    tok = train_tokenizer([str(base / "corpus")], str(base / "tok"), vocab_size=300)
    tokenize([str(base / "corpus")], str(tok), str(base / "tokenized"))
    (base / "rules.yaml").write_text(RULES)
    return base, rows_by_id, tok


def run(base, capsys):
    report = sample(SampleConfig(tokenized_path=str(base / "tokenized"), output_path=str(base / "out"),
                                 prefix_config_path=str(base / "rules.yaml"), epochs=EPOCHS, context_size=C))
    return report, capsys.readouterr()


def drawn_rows(base, rows_by_id, tok_file):
    """Per epoch, (source, row, inst tokens, resp tokens) of every sample, read from the output files
    with the raw HF tokenizer."""
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(tok_file))
    tokens = np.load(base / "out" / "tokens.npy")
    epochs = []
    for e in range(EPOCHS):
        a = {k: np.load(base / "out" / f"epoch_{e}" / f"{k}.npy") for k in ("inst_start", "inst_len", "resp_start", "resp_len")}
        samples = []
        for s, n, rs, rn in zip(a["inst_start"], a["inst_len"], a["resp_start"], a["resp_len"]):
            inst, resp = tokens[s:s + n].tolist(), tokens[rs:rs + rn].tolist()
            assert inst[0] == hf.token_to_id("<|boq|>") and inst[-1] == hf.token_to_id("<|eoq|>")
            samples.append((*rows_by_id[hf.decode(inst[2:-1])], inst, resp))
        epochs.append(samples)
    return epochs, hf


def test_nested_sources_are_flattened(sampled):
    base, _, _ = sampled
    folders = sorted(p.name for p in (base / "tokenized").iterdir() if p.is_dir())
    assert folders == sorted(KEPT_TOKENS)


def test_per_source_per_epoch_rows_tokens_and_counts(sampled, capsys):
    base, rows_by_id, tok = sampled
    report, out = run(base, capsys)
    epochs, hf = drawn_rows(base, rows_by_id, tok)
    for samples in epochs:
        for name in KEPT_TOKENS:
            mine = [s for s in samples if s[0] == name]
            assert len(mine) == ROWS_PER_EPOCH[name], name
            assert sum(len(i) + len(r) for _, _, i, r in mine) == TOKENS_PER_EPOCH[name], name
        assert max(len(i) + len(r) for _, _, i, r in samples) == C
    assert report["total_length"] == sum(TOKENS_PER_EPOCH.values()) == 206
    meta = json.loads((base / "out" / "metadata.json").read_text())
    assert (meta["total_length"], meta["max_seq_len"]) == (206, C)
    by_source = {r["source"]: r for r in report["sources"]}
    for name, (short, long, truncated) in COUNTS.items():
        r = by_source[name]
        assert (r["short_response_dropped"], r["too_long_dropped"], r["truncated"]) == (short, long, truncated), name
        assert (r["kept"], r["kept_tokens"]) == (len(KEPT_TOKENS[name]), sum(KEPT_TOKENS[name])), name
    # The multi-match warning, and the category roll-up: flan = flan__cot_a + flan__other.
    assert "flan__cot_a.jsonl matches 2 prefixes" in out.err and "'flan__cot_', applies" in out.err
    assert "flan__other.jsonl matches" not in out.err
    flan_tokens = EPOCHS * (TOKENS_PER_EPOCH["flan__cot_a.jsonl"] + TOKENS_PER_EPOCH["flan__other.jsonl"])
    assert f"| **flan** | 6 | 0 | 1 | 1 | 5 | 52 | 6 | {flan_tokens:,} (" in out.out
    assert f"| **GLOBAL** | 22 | 1 | 2 | 3 | 19 | {sum(map(sum, KEPT_TOKENS.values()))} |" in out.out


def test_rotation_truncation_and_the_context_edge(sampled, capsys):
    base, rows_by_id, tok = sampled
    run(base, capsys)
    epochs, hf = drawn_rows(base, rows_by_id, tok)
    seen = lambda name, upto: {row for samples in epochs[:upto] for s, row, _, _ in samples if s == name}
    # SYNTH: 8 rows, 3 drawn per epoch from a carried-over permutation: 3, 6, then all 8 distinct.
    assert [len(seen("SYNTH__part1.jsonl", e + 1)) for e in range(EPOCHS)] == [3, 6, 8]
    assert all(len({row for s, row, _, _ in samples if s == "SYNTH__part1.jsonl"}) == 3 for samples in epochs[:2])
    # flan__other (cap 2 of 3 kept): 2, then 3 unique; repeat sources give each row `repeat` times.
    assert [len(seen("flan__other.jsonl", e + 1)) for e in range(EPOCHS)] == [2, 3, 3]
    for samples in epochs:
        assert sorted(row for s, row, _, _ in samples if s == "gsm8k_train.jsonl") == [0, 0, 0, 1, 1, 1]
        assert sorted(row for s, row, _, _ in samples if s == "flan__cot_a.jsonl") == [0, 0, 1, 1]
        misc = {row: (len(i), resp) for s, row, i, resp in samples if s == "misc.jsonl"}
        seven = hf.token_to_id("7")
        assert misc == {0: (6, [seven, seven, hf.token_to_id("<|eoa|>")]),
                        1: (15, [seven]),                 # one token short of C: a 1-token response
                        3: (6, [seven] * 9 + [hf.token_to_id("<|eoa|>")]),
                        5: (6, [seven] * 10)}             # cut: no eoa
    report = {r["source"]: r for r in sample(SampleConfig(
        tokenized_path=str(base / "tokenized"), output_path=str(base / "out"),
        prefix_config_path=str(base / "rules.yaml"), epochs=EPOCHS, context_size=C))["sources"]}
    assert (report["SYNTH__part1.jsonl"]["unique_rows"], report["flan__other.jsonl"]["unique_rows"]) == (8, 3)


def test_defaults_are_data_io_s():
    cfg = SampleConfig(tokenized_path="x")
    assert (cfg.context_size, cfg.min_resp_length, cfg.epochs, cfg.seed) == (4097, 2, 10, 0)


def test_prepare_sft_data_every_row_once_per_epoch(sampled, tmp_path, capsys):
    """The reference's SFT preparation: each row once per epoch in its own order, empty responses
    dropped, an over-long row an error; the strings of the tokenizer_info next to the tokenizer."""
    from tokenizers import Tokenizer

    from data_io import DataError
    from data_io.prepare_sft_data import prepare_sft_data

    _, _, tok = sampled
    run_tok = tmp_path / "run_tokenizer"  # a run directory's tokenizer/ folder with its tokenizer_info
    run_tok.mkdir()
    (run_tok / "tokenizer.json").write_bytes(tok.read_bytes())
    raw = Tokenizer.from_file(str(tok))
    (run_tok / "tokenizer_info.json").write_text(json.dumps(
        {"tokenizer_path": "tokenizer.json", "vocab_size": raw.get_vocab_size(), "boq": "<|eoq|>", "eoq": "<|boq|>",
         "eoa": "<|eoa|>", "condition_mapping": {"direct": "<|cot|>"}}))  # swapped, so the source shows
    rows = [("123", "45"), ("678", ""), ("9012", "3")]  # inst 6, 6, 7; resp 3, 1 (dropped), 2
    train = tmp_path / "sft.jsonl"
    train.write_text("".join(json.dumps({"instruction": i, "response": r}) + "\n" for i, r in rows))
    out = prepare_sft_data(str(train), str(run_tok), str(tmp_path / "sft"), epochs=3, context_size=9)
    assert "dropped 1 rows with an empty response" in capsys.readouterr().out
    tokens = np.load(out / "tokens.npy")
    orders = []
    for e in range(3):
        a = {k: np.load(out / f"epoch_{e}" / f"{k}.npy") for k in ("inst_start", "inst_len")}
        insts = [tokens[s:s + n].tolist() for s, n in zip(a["inst_start"], a["inst_len"])]
        assert all(i[:2] == [raw.token_to_id("<|eoq|>"), raw.token_to_id("<|cot|>")] for i in insts)
        orders.append([raw.decode(i[2:-1]) for i in insts])
        assert sorted(orders[-1]) == ["123", "9012"]
    assert json.loads((out / "metadata.json").read_text())["total_length"] == 9 + 9
    with pytest.raises(DataError, match=r"sft.jsonl: row 1 is 9 tokens, over --context-size 8 \(2 such rows\)"):
        prepare_sft_data(str(train), str(run_tok), str(tmp_path / "sft2"), epochs=1, context_size=8)
