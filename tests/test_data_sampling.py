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


# A second corpus, tokenized by hand in the layout data_io's Rust tokenizer writes (one folder per
# source, flattened names, tokens.npy holding each row's instruction then its response), so the
# lengths are exact. Context C2 = 12, 3 epochs, seed 5. Per data_io's rules:
C2, EPOCHS2, SEED2 = 12, 3, 5
RULES2 = """\
- prefix: "SYNTH__"
  max_per_file: 2
- prefix: "SYNTH__b"
  repeat: 4
- prefix: "web__"
  max_per_file: 5
  long_context: drop
  repeat: 2
"""
SHAPES2 = {  # (instruction tokens, response tokens) per row
    # cap 2 of 6: epochs 0, 1, 2 draw one permutation, two rows each: every row exactly once
    "SYNTH__a": [(3, 2), (3, 3), (4, 2), (4, 4), (5, 3), (3, 5)],
    # matches both SYNTH__ rules: the first applies (cap 2, repeat 1, not repeat 4), with a warning
    "SYNTH__b": [(3, 3)] * 5,
    # no rule: truncate
    "misc": [(3, 2),     # kept
             (11, 2),    # one short of C2: cut to a 1-token response (11 + 1)
             (12, 2),    # the instruction fills C2: dropped
             (10, 5),    # cut to 10 + 2
             (4, 1),     # response under min_resp_length 2: dropped (short)
             (2, 10)],   # 12 = C2: kept whole
    # drop; cap 5 > 2 kept rows, repeat 2: both kept rows twice per epoch
    "web__x": [(3, 2), (6, 6), (6, 7), (11, 1), (11, 2), (12, 3)],
}
KEPT2 = {"SYNTH__a": [(3, 2), (3, 3), (4, 2), (4, 4), (5, 3), (3, 5)], "SYNTH__b": [(3, 3)] * 5,
         "misc": [(3, 2), (11, 1), (10, 2), (2, 10)], "web__x": [(3, 2), (6, 6)]}
COUNTS2 = {"SYNTH__a": (0, 0, 0), "SYNTH__b": (0, 0, 0), "misc": (1, 1, 2), "web__x": (1, 3, 0)}
ROWS_PER_EPOCH2 = {"SYNTH__a": 2, "SYNTH__b": 2, "misc": 4, "web__x": 4}
UNIQUE_AFTER_EPOCH2 = {"SYNTH__a": [2, 4, 6], "SYNTH__b": [2, 4, 5], "misc": [4, 4, 4], "web__x": [2, 2, 2]}
# Tokens per epoch where every epoch draws the same multiset; SYNTH__a only over the 3 epochs (41).
TOKENS_PER_EPOCH2 = {"SYNTH__b": 12, "misc": 5 + 12 + 12 + 12, "web__x": 2 * (5 + 12)}
TOTAL_LENGTH2 = round((41 + EPOCHS2 * (12 + 41 + 34)) / EPOCHS2)  # 302 / 3 -> 101


@pytest.fixture
def hand_tokenized(tmp_path):
    """tokenized/ with the SHAPES2 sources; token ids count up so every position is recognisable."""
    root, offset = tmp_path / "tokenized", 0
    for name, shapes in SHAPES2.items():
        (root / name).mkdir(parents=True)
        inst_len = np.array([i for i, _ in shapes])
        resp_len = np.array([o for _, o in shapes])
        inst_start = np.concatenate([[0], np.cumsum(inst_len + resp_len)[:-1]])
        n = int((inst_len + resp_len).sum())
        np.save(root / name / "tokens.npy", ((offset + np.arange(n)) % 250).astype(np.uint32))
        for field, value in (("inst_start", inst_start), ("inst_len", inst_len),
                             ("resp_start", inst_start + inst_len), ("resp_len", resp_len)):
            np.save(root / name / f"{field}.npy", value.astype(np.uint32 if field.endswith("len") else np.int64))
        offset += n
    (root / "tokenizer_info.json").write_text(json.dumps({"vocab_size": 256, "tokenizer_path": "absent.json"}))
    (tmp_path / "rules.yaml").write_text(RULES2)
    return tmp_path


def sample_by_hand_fixture(base, capsys):
    report = sample(SampleConfig(tokenized_path=str(base / "tokenized"), output_path=str(base / "out"),
                                 prefix_config_path=str(base / "rules.yaml"), epochs=EPOCHS2,
                                 context_size=C2, seed=SEED2))
    epochs = [{f: np.load(base / "out" / f"epoch_{e}" / f"{f}.npy")
               for f in ("inst_start", "inst_len", "resp_start", "resp_len")} for e in range(EPOCHS2)]
    return report, epochs, capsys.readouterr()


def source_of(inst_start):
    """Source name of an output row, by where its instruction starts (sources in name order)."""
    ends = np.cumsum([sum(i + o for i, o in shapes) for shapes in SHAPES2.values()])
    return list(SHAPES2)[int(np.searchsorted(ends, inst_start, side="right"))]


def data_io_epochs(rules: list[dict]) -> list[dict[str, np.ndarray]]:
    """data_io's sampling restated for this corpus: filter per rule, then per epoch and source
    `repeat x min(cap, kept)` draws from a per-source permutation that carries over epochs (a new
    one when used up), sources in name order, then the epoch shuffled whole; one Philox stream."""
    rng = np.random.Generator(np.random.Philox(seed=SEED2))
    pools, offset = [], 0
    for name in sorted(SHAPES2):
        inst, resp = (np.array(column) for column in zip(*SHAPES2[name]))
        start = offset + np.concatenate([[0], np.cumsum(inst + resp)[:-1]])
        offset += int((inst + resp).sum())
        rule = next((r for r in rules if name.startswith(r["prefix"])), {})
        room = C2 - np.minimum(inst, C2)
        keep = resp >= 2
        if rule.get("long_context", "truncate") == "truncate":
            keep &= room >= 1
            resp = np.minimum(resp, room)
        else:
            keep &= resp <= room
        rows = np.stack([start, inst, start + inst, resp], 1)[keep]
        cap = rule.get("max_per_file")
        pools.append((rows, (len(rows) if cap is None else min(cap, len(rows))) * rule.get("repeat", 1), []))
    epochs = []
    for _ in range(EPOCHS2):
        drawn = []
        for rows, count, pending in pools:
            for _ in range(count):
                if not pending:
                    pending.extend(rng.permutation(len(rows)))
                drawn.append(rows[pending.pop(0)])
        drawn = np.array(drawn)[rng.permutation(len(drawn))]
        epochs.append(dict(zip(("inst_start", "inst_len", "resp_start", "resp_len"), drawn.T)))
    return epochs


def test_epochs_equal_data_io_s_draws(hand_tokenized, capsys):
    import yaml

    _, epochs, _ = sample_by_hand_fixture(hand_tokenized, capsys)
    for ours, theirs in zip(epochs, data_io_epochs(yaml.safe_load(RULES2))):
        for field in theirs:
            assert ours[field].tolist() == theirs[field].tolist(), field


def test_per_epoch_figures_by_hand(hand_tokenized, capsys):
    report, epochs, out = sample_by_hand_fixture(hand_tokenized, capsys)
    seen = {name: set() for name in SHAPES2}
    synth_a_tokens = 0
    for e, spans in enumerate(epochs):
        names = [source_of(s) for s in spans["inst_start"]]
        for name in SHAPES2:
            mine = [k for k, n in enumerate(names) if n == name]
            assert len(mine) == ROWS_PER_EPOCH2[name], (e, name)
            lengths = sorted(zip(spans["inst_len"][mine].tolist(), spans["resp_len"][mine].tolist()))
            tokens = sum(i + o for i, o in lengths)
            if name == "SYNTH__a":
                assert len(set(spans["inst_start"][mine])) == 2  # a cap draws distinct rows
                synth_a_tokens += tokens
            else:
                assert tokens == TOKENS_PER_EPOCH2[name], (e, name)
            if name in ("misc", "web__x"):  # every kept row, `repeat` times, each epoch
                repeat = ROWS_PER_EPOCH2[name] // len(KEPT2[name])
                assert lengths == sorted(KEPT2[name] * repeat), (e, name)
            seen[name] |= set(spans["inst_start"][mine].tolist())
            assert len(seen[name]) == UNIQUE_AFTER_EPOCH2[name][e], (e, name)
        assert max(spans["inst_len"] + spans["resp_len"]) == C2
    assert synth_a_tokens == sum(i + o for i, o in KEPT2["SYNTH__a"]) == 41

    by_source = {r["source"]: r for r in report["sources"]}
    for name, (short, long, truncated) in COUNTS2.items():
        r = by_source[name]
        assert (r["short_response_dropped"], r["too_long_dropped"], r["truncated"]) == (short, long, truncated), name
        assert (r["kept"], r["kept_tokens"]) == (len(KEPT2[name]), sum(i + o for i, o in KEPT2[name])), name
        assert (r["rows_per_epoch"], r["unique_rows"]) == (ROWS_PER_EPOCH2[name], UNIQUE_AFTER_EPOCH2[name][-1]), name
    assert by_source["SYNTH__b"]["rule"] == "SYNTH__"
    assert report["total_length"] == TOTAL_LENGTH2 == 101
    meta = json.loads((hand_tokenized / "out" / "metadata.json").read_text())
    assert (meta["total_length"], meta["max_seq_len"], meta["epochs"], meta["seed"]) == (101, C2, EPOCHS2, SEED2)
    assert "SYNTH__b matches 2 prefixes" in out.err and "SYNTH__a matches" not in out.err
    # Category roll-up: SYNTH = SYNTH__a + SYNTH__b (11 rows, 71 tokens; sampled 41 + 3 x 12 = 77 of
    # 302, instruction 22 + 18 and response 19 + 18 tokens), web = web__x.
    assert "| **SYNTH** | 11 | 0 | 0 | 0 | 11 | 71 | 4 | 77 (25.5%) | 40 / 37 | 11 (100.0%) | 71 (100.0%) |" in out.out
    assert "| **web** | 6 | 1 | 3 | 0 | 2 | 17 | 4 | 102 (33.8%) | 54 / 48 | 2 (100.0%) | 17 (100.0%) |" in out.out
    assert "| **GLOBAL** | 23 | 2 | 4 | 2 | 17 | 129 | 12 | 302 (100.0%) |" in out.out


def test_loader_trains_what_the_sampler_keeps(hand_tokenized, capsys):
    """The training loader keeps every sampled row, the 1-token response at the context edge
    included (as data_io's sampler writes it and the reference's loader trains it): one label,
    predicted by the last instruction token."""
    from dataset_new import PackedDataset
    from models.lm_head import IGNORE_LABEL

    sample_by_hand_fixture(hand_tokenized, capsys)
    data = PackedDataset(str(hand_tokenized / "out"), global_batch_size=64, epochs=EPOCHS2)
    tokens = np.load(hand_tokenized / "out" / "tokens.npy")
    edge = sum(i + o for shapes in list(SHAPES2.values())[:2] for i, o in shapes) + 5  # misc row 1
    found = 0
    for e in range(EPOCHS2):
        assert data.drop_counts(e) == {"rows": 12, "kept": 12, "short_response_dropped": 0,
                                       "too_long_dropped": 0, "truncated": 0}
    for batch, stats in data:
        cu, prefix, causal = (batch[k].tolist() for k in ("cu_seqlens", "prefix_lens", "causal_lens"))
        for k in range(stats["num_samples"]):
            if batch["inputs"][cu[k]].item() == tokens[edge]:
                found += 1
                assert (prefix[k], causal[k], cu[k + 1] - cu[k]) == (11, 0, 11)
                labels = batch["labels"][cu[k]:cu[k + 1]].tolist()
                assert labels == [IGNORE_LABEL] * 10 + [int(tokens[edge + 11])]
    assert found == EPOCHS2
