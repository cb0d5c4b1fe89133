import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_io import DataError
from data_io import demo, prepare_sft_data, sample_tokenized, tokenize as tokenize_cli, train_tokenizer as train_cli
from data_io.sample_tokenized import SampleConfig, sample
from data_io.tokenize import tokenize
from data_io.train_tokenizer import train_tokenizer

SENTENCES = [
    "The river runs quietly past the old mill.", "Why do cats sleep so much during the day?",
    "Bread rises because yeast produces carbon dioxide.", "Name three planets closer to the sun than Mars.",
    "Mercury, Venus and Earth.", "She wrote 42 letters in 1999, then stopped.", "Translate 'good morning' to French.",
    "Bonjour.", "A square has four equal sides and four right angles.", "Summarize: the meeting moved to Friday.",
]


def make_rows(n, offset=0):
    rows = []
    for k in range(n):
        a, b = SENTENCES[(k + offset) % len(SENTENCES)], SENTENCES[(3 * k + offset + 1) % len(SENTENCES)]
        row = {"instruction": f"{a} (#{k + offset})", "response": f"{b} {k * 7}"}
        if k % 3 == 1:
            row["condition"] = "cot,synth"
        elif k % 3 == 2:
            row["condition"] = "direct"
        rows.append(row)
    return rows


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "web").mkdir(parents=True)
    jsonl_rows, parquet_rows = make_rows(40), make_rows(25, offset=100)
    (root / "web" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jsonl_rows))
    table = pa.table({k: [r.get(k) for r in parquet_rows] for k in ("instruction", "response", "condition")})
    pq.write_table(table, root / "b.parquet")
    return root, jsonl_rows + parquet_rows


def conditions_of(row):
    return row.get("condition", "direct").split(",")


def check_sampled_layout(out, epochs, vocab_size):
    meta = json.loads((out / "metadata.json").read_text())
    assert set(meta) >= {"tokenizer_info", "max_seq_len", "total_length"}
    info = meta["tokenizer_info"]
    assert set(info) >= {"vocab_size", "tokenizer_path", "boq", "eoq", "eoa", "condition_mapping"}
    assert info["vocab_size"] == vocab_size
    assert info["condition_mapping"]["direct"] == "<|direct|>"
    tokens = np.load(out / "tokens.npy")
    assert tokens.ndim == 1 and tokens.dtype == np.uint16
    spans = []
    for e in range(epochs):
        arrays = {k: np.load(out / f"epoch_{e}" / f"{k}.npy") for k in ("inst_start", "inst_len", "resp_start", "resp_len")}
        assert all(a.ndim == 1 and np.issubdtype(a.dtype, np.integer) for a in arrays.values())
        assert len({len(a) for a in arrays.values()}) == 1
        spans.append(arrays)
    assert not (out / f"epoch_{epochs}").exists()
    return meta, tokens, spans


def decoded_samples(tokens, arrays, decode, ids):
    """(instruction, response, conditions) per sample, checking the special-token framing."""
    by_id = {v: k for k, v in ids.items()}
    out = []
    for s, n, rs, rn in zip(arrays["inst_start"], arrays["inst_len"], arrays["resp_start"], arrays["resp_len"]):
        inst, resp = tokens[s:s + n].tolist(), tokens[rs:rs + rn].tolist()
        assert inst[0] == ids["boq"] and inst[-1] == ids["eoq"] and resp[-1] == ids["eoa"]
        conds = []
        for t in inst[1:]:
            if t not in by_id or not by_id[t].startswith("cond:"):
                break
            conds.append(by_id[t][5:])
        assert ids["eoa"] not in resp[:-1] and ids["boq"] not in inst[1:]
        out.append((decode(inst[1 + len(conds):-1]), decode(resp[:-1]), conds))
    return out


def test_round_trip_hf(tmp_path, corpus):
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    root, rows = corpus
    tok_file = train_tokenizer([str(root)], str(tmp_path / "tok"), vocab_size=400, conditions=["direct", "cot"])
    tokenize([str(root)], str(tok_file), str(tmp_path / "tokenized"))
    for name in ("web__a.jsonl", "b.parquet"):
        assert {p.name for p in (tmp_path / "tokenized" / name).iterdir()} >= {
            "tokens.npy", "inst_start.npy", "inst_len.npy", "resp_start.npy", "resp_len.npy"}
    assert (tmp_path / "tokenized" / "tokenizer_info.json").is_file()
    out = tmp_path / "sampled"
    sample(SampleConfig(tokenized_path=str(tmp_path / "tokenized"), output_path=str(out), epochs=2, context_size=512))

    hf = Tokenizer.from_file(str(tok_file))  # independent of data_io: the raw HF tokenizer
    ids = {"boq": hf.token_to_id("<|boq|>"), "eoq": hf.token_to_id("<|eoq|>"), "eoa": hf.token_to_id("<|eoa|>"),
           **{f"cond:{c}": hf.token_to_id(f"<|{c}|>") for c in ("direct", "cot", "synth")}}
    assert None not in ids.values()  # synth came from the rows, not --conditions
    meta, tokens, spans = check_sampled_layout(out, 2, hf.get_vocab_size())
    assert meta["tokenizer_info"]["kind"] == "hf"
    expected = sorted((r["instruction"], r["response"], conditions_of(r)) for r in rows)
    for arrays in spans:
        assert sorted(decoded_samples(tokens, arrays, hf.decode, ids)) == expected
    fast = PreTrainedTokenizerFast(tokenizer_file=meta["tokenizer_info"]["tokenizer_path"])
    assert fast.convert_tokens_to_ids("<|eoa|>") == ids["eoa"]
    assert fast.decode(hf.encode("Bonjour, 12 rivers.").ids) == "Bonjour, 12 rivers."


def test_round_trip_tiktoken(tmp_path, corpus):
    import tiktoken

    root, rows = corpus
    ranks = {bytes([b]): b for b in range(256)}
    for merge in (b"th", b"the", b" the", b"in", b"er", b"on", b" a", b"an", b"ar", b"ea"):
        ranks[merge] = len(ranks)
    enc = tiktoken.Encoding("testenc", pat_str=r"""'s|'t| ?\p{L}+| ?\p{N}| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                            mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 266})
    tokenize([str(root)], enc, str(tmp_path / "tokenized"), conditions=["direct", "cot", "synth"])
    out = tmp_path / "sampled"
    sample(SampleConfig(tokenized_path=str(tmp_path / "tokenized"), output_path=str(out), epochs=1, context_size=512))
    # Appended above the encoding's 267 ids: boq, eoq, eoa, pad, then the conditions in order.
    ids = {"boq": 267, "eoq": 268, "eoa": 269, "cond:direct": 271, "cond:cot": 272, "cond:synth": 273}
    meta, tokens, spans = check_sampled_layout(out, 1, 274)
    assert meta["tokenizer_info"]["kind"] == "tiktoken"
    assert meta["tokenizer_info"]["special_token_ids"]["<|pad|>"] == 270
    expected = sorted((r["instruction"], r["response"], conditions_of(r)) for r in rows)
    assert sorted(decoded_samples(tokens, spans[0], enc.decode, ids)) == expected


@pytest.fixture
def tokenized(tmp_path, corpus):
    root, _ = corpus
    tok_file = train_tokenizer([str(root)], str(tmp_path / "tok"), vocab_size=300)
    tokenize([str(root)], str(tok_file), str(tmp_path / "tokenized"))
    return tmp_path / "tokenized", tok_file


def read_all(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical_other_seed_other_order(tmp_path, tokenized):
    src, _ = tokenized
    outs = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        out = tmp_path / "runs" / "out"  # same absolute path, as on every node
        sample(SampleConfig(tokenized_path=str(src), output_path=str(out), epochs=2, seed=seed))
        outs[name] = read_all(out)
    assert outs["a"] == outs["b"]
    assert outs["a"]["epoch_0/inst_start.npy"] != outs["c"]["epoch_0/inst_start.npy"]
    assert outs["a"]["epoch_0/inst_start.npy"] != outs["a"]["epoch_1/inst_start.npy"]


def test_prefix_rules_and_counted_policies(tmp_path, capsys):
    root = tmp_path / "corpus"
    (root / "long").mkdir(parents=True)
    rows = [{"instruction": "short question", "response": "short answer"},
            {"instruction": "empty answer", "response": ""},
            {"instruction": "long one", "response": "word " * 60}]
    for name in ("long/x.jsonl", "plain.jsonl"):
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok_file = train_tokenizer([str(root)], str(tmp_path / "tok"), vocab_size=300)
    tokenize([str(root)], str(tok_file), str(tmp_path / "tokenized"))
    rules = tmp_path / "rules.yaml"
    rules.write_text("- prefix: long__\n  long_context: drop\n  repeat: 2\n")
    report = sample(SampleConfig(tokenized_path=str(tmp_path / "tokenized"), output_path=str(tmp_path / "s"),
                                 epochs=1, context_size=20, prefix_config_path=str(rules)))
    by_source = {r["source"]: r for r in report["sources"]}
    # data_io's rules: `drop` drops the long row, the default (truncate) cuts its response to fit.
    long, plain = by_source["long__x.jsonl"], by_source["plain.jsonl"]
    assert (long["short_response_dropped"], long["too_long_dropped"], long["kept"], long["rows_per_epoch"]) == (1, 1, 1, 2)
    assert (plain["short_response_dropped"], plain["truncated"], plain["kept"], plain["rows_per_epoch"]) == (1, 1, 2, 2)
    assert "| **long__x.jsonl** | long__ |" in capsys.readouterr().out
    e = {k: np.load(tmp_path / "s" / "epoch_0" / f"{k}.npy") for k in ("inst_len", "resp_len")}
    assert len(e["inst_len"]) == 4 and (e["inst_len"] + e["resp_len"]).max() == 20
    # A context too small for every sample is an error naming the knob, not an empty dataset.
    with pytest.raises(DataError, match=r"no row is drawn .*raise context_size"):
        sample(SampleConfig(tokenized_path=str(tmp_path / "tokenized"), output_path=str(tmp_path / "s3"),
                            epochs=1, context_size=3))


def test_incremental_tokenize(tmp_path, corpus):
    root, _ = corpus
    tok_file = train_tokenizer([str(root)], str(tmp_path / "tok"), vocab_size=300)
    out = str(tmp_path / "tokenized")
    assert tokenize([str(root)], str(tok_file), out) == {"tokenized": 2, "skipped": 0, "pruned": 0}
    assert tokenize([str(root)], str(tok_file), out) == {"tokenized": 0, "skipped": 2, "pruned": 0}
    with open(root / "web" / "a.jsonl", "a") as f:
        f.write(json.dumps({"instruction": "new", "response": "row"}) + "\n")
    (root / "b.parquet").unlink()
    assert tokenize([str(root)], str(tok_file), out) == {"tokenized": 1, "skipped": 0, "pruned": 1}
    assert not (tmp_path / "tokenized" / "b.parquet").exists()
    assert len(np.load(tmp_path / "tokenized" / "web__a.jsonl" / "inst_len.npy")) == 41


def test_bad_rows_named_with_line(tmp_path, tokenized):
    _, tok_file = tokenized
    bad = tmp_path / "bad"
    bad.mkdir()
    cases = [
        (b'{"instruction": "a", "response": "b"}\n\n{"instruction": "a", oops\n', r"x.jsonl:3: not valid JSON"),
        (b'{"instruction": "a"}\n', r"x.jsonl:1: field 'response' is missing"),
        (b'{"instruction": "a", "response": "b", "condition": "nope"}\n', r"x.jsonl:1: condition \['nope'\] has no token"),
        (b'{"instruction": "a", "response": "b", "condition": "cot,eoa"}\n',
         r"x.jsonl:1: condition \['eoa'\] names a structure token"),
        (b'{"instruction": "a", "response": "b"}\n{"instruction": "caf\xe9", "response": "b"}\n', r"x.jsonl:2: not UTF-8"),
    ]
    for content, message in cases:
        (bad / "x.jsonl").write_bytes(content)
        with pytest.raises(DataError, match=message):
            tokenize([str(bad / "x.jsonl")], str(tok_file), str(tmp_path / "o"))


def test_bad_tool_inputs_named_before_any_work(tmp_path, corpus, tokenized):
    root, _ = corpus
    _, tok_file = tokenized
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(DataError, match=r"bad.json: not a tokenizer.json the tokenizers library can read"):
        tokenize([str(root)], str(tmp_path / "bad.json"), str(tmp_path / "o"))
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(DataError, match=r"no rows in .*empty.jsonl"):
        train_tokenizer([str(tmp_path / "empty.jsonl")], str(tmp_path / "tok_empty"))
    assert not (tmp_path / "tok_empty" / "tokenizer.json").exists()
    with pytest.raises(DataError, match=r"--vocab-size 10 is below .* give at least 264"):  # 256 bytes + 8 specials
        train_tokenizer([str(root)], str(tmp_path / "tok_small"), vocab_size=10)
    sft = lambda train, epochs=1: prepare_sft_data.prepare_sft_data(  # noqa: E731
        str(train), str(tok_file), str(tmp_path / "sft"), epochs)
    with pytest.raises(DataError, match=r"missing.jsonl: no such file"):
        sft(tmp_path / "missing.jsonl")
    (tmp_path / "r.jsonl").write_text(json.dumps({"instruction": "a", "response": ""}) + "\n")
    with pytest.raises(DataError, match=r"--epochs 0: must be >= 1"):
        sft(tmp_path / "r.jsonl", epochs=0)
    with pytest.raises(DataError, match=r"r.jsonl: no row with a non-empty response \(1 rows read\)"):
        sft(tmp_path / "r.jsonl")
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path / "demo"), "--train-size", "0"])


def test_unlisted_conditions_past_the_vocab_size_are_reported(tmp_path, corpus, capsys):
    root, _ = corpus  # its rows use cot and synth
    tok_file = train_tokenizer([str(root)], str(tmp_path / "tok"), vocab_size=300, conditions=["direct"])
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(tok_file)).get_vocab_size() > 300
    assert "not in --conditions" in capsys.readouterr().err


def test_special_token_strings_in_text_stay_text(tokenized):
    """A row that writes "<|eoa|>" in its text must not get the eoa token mid-sample (generation
    would learn to stop there); only the framing inserts structure tokens."""
    from data_io.text_tokenizer import load_tokenizer

    _, tok_file = tokenized
    tok = load_tokenizer(str(tok_file))
    text = "quote <|eoa|> and <|boq|><|direct|> literally"
    ids = tok.encode_batch([text])[0]
    assert not set(ids) & set(tok.special_ids.values())
    assert tok.decode(ids) == text


def test_bad_tokenized_arrays_named(tmp_path, tokenized):
    src, _ = tokenized
    folder = src / "web__a.jsonl"
    cfg = SampleConfig(tokenized_path=str(src), output_path=str(tmp_path / "s"))
    np.save(folder / "inst_len.npy", np.load(folder / "inst_len.npy")[:-1])
    with pytest.raises(DataError, match=r"a.jsonl: span arrays have unequal lengths"):
        sample(cfg)
    tokens = np.load(folder / "tokens.npy")
    np.save(folder / "tokens.npy", tokens[:-5])
    np.save(folder / "inst_len.npy", np.load(folder / "resp_len.npy"))
    with pytest.raises(DataError, match=r"outside tokens.npy"):
        sample(cfg)
    tokens[7] = 999
    np.save(folder / "tokens.npy", tokens)
    with pytest.raises(DataError, match=r"a.jsonl/tokens.npy: token 7 has id 999 >= vocab_size"):
        sample(cfg)
    with pytest.raises(DataError, match=r"tokenizer_info.json is missing"):
        sample(SampleConfig(tokenized_path=str(tmp_path), output_path=str(tmp_path / "s")))


@pytest.mark.parametrize("module", [train_cli, tokenize_cli, sample_tokenized, demo, prepare_sft_data])
def test_help(module, capsys):
    try:
        module.main(["--help"])
    except SystemExit as stop:
        assert stop.code == 0
    assert "python -m data_io." in capsys.readouterr().out


def test_demo_builds_small(tmp_path):
    sampled = demo.build_demo(str(tmp_path / "demo"), train_size=2000, heldout_size=50)
    held = [json.loads(line) for line in (tmp_path / "demo" / "heldout.jsonl").read_text().splitlines()]
    train = {json.loads(line)["instruction"] for line in (tmp_path / "demo" / "corpus" / "train.jsonl").open()}
    assert len(held) == 50 and not train & {r["instruction"] for r in held}
    assert all(r["condition"] == "direct" and set(r) == {"instruction", "response", "condition"} for r in held)
    assert all(int(r["response"]) == sum(map(int, r["instruction"].split()[1:])) for r in held if r["instruction"].startswith("add"))
    meta = json.loads((sampled / "metadata.json").read_text())
    assert meta["max_seq_len"] == 64 and os.path.isfile(meta["tokenizer_info"]["tokenizer_path"])
