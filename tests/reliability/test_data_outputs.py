"""Data tools delete only what they wrote: a tokenize or sample output folder may hold other data,
which survives every run (and the tools' own output is the same as in an empty folder); an output
folder equal to or inside an input is refused before anything is written."""

import json

import pytest

from data_io import sample_tokenized as sample_cli, tokenize as tokenize_cli
from data_io.sample_tokenized import SampleConfig, sample
from data_io.tokenize import tokenize
from data_io.train_tokenizer import train_tokenizer


def snapshot(folder):
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "corpus"
    (root / "web").mkdir(parents=True)
    for name, n in (("web/a.jsonl", 12), ("b.jsonl", 7)):
        rows = [{"instruction": f"question {k} about {name}", "response": f"answer {k * 3}"} for k in range(n)]
        (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    tok = train_tokenizer([str(root)], str(tmp_path / "tok"), vocab_size=300)
    return root, tok


def foreign_files(folder):
    """Someone else's data, shaped like tokenize's own output (the old pruning deleted any
    folder holding a source.json)."""
    (folder / "other_project").mkdir(parents=True)
    (folder / "other_project" / "source.json").write_text('{"source": "elsewhere"}')
    (folder / "other_project" / "tokens.npy").write_bytes(b"not ours")
    (folder / "notes.txt").write_text("keep me")
    (folder / "epoch_9").mkdir()
    (folder / "epoch_9" / "x.npy").write_bytes(b"keep")
    return snapshot(folder)


def test_tokenize_into_a_folder_of_foreign_folders_loses_nothing(tmp_path, corpus):
    root, tok = corpus
    tokenize([str(root)], str(tok), str(tmp_path / "clean"))
    shared = tmp_path / "shared"
    before = foreign_files(shared)
    tokenize([str(root)], str(tok), str(shared))
    after = snapshot(shared)
    assert {k: after[k] for k in before} == before
    clean = snapshot(tmp_path / "clean")
    ours = {k: v for k, v in after.items() if k not in before}
    # the same output as in an empty folder (tokenizer_info names its own folder's tokenizer.json)
    assert set(ours) == set(clean)
    assert {k: v for k, v in ours.items() if k != "tokenizer_info.json" and not k.startswith(".")} == \
           {k: v for k, v in clean.items() if k != "tokenizer_info.json" and not k.startswith(".")}

    (root / "b.jsonl").unlink()  # pruning removes our folder of the dropped source, nothing else
    assert tokenize([str(root)], str(tok), str(shared))["pruned"] == 1
    after = snapshot(shared)
    assert {k: after[k] for k in before} == before and not (shared / "b.jsonl").exists()

    # sampling into a folder of other data: that data survives, and sampling again replaces only ours
    sampled = tmp_path / "sampled"
    kept = foreign_files(sampled)
    sample(SampleConfig(tokenized_path=str(tmp_path / "clean"), output_path=str(sampled), epochs=3, context_size=64))
    sample(SampleConfig(tokenized_path=str(tmp_path / "clean"), output_path=str(sampled), epochs=1, context_size=64))
    after = snapshot(sampled)
    assert {k: after[k] for k in kept} == kept
    assert (sampled / "epoch_0").is_dir() and not (sampled / "epoch_2").exists()


def test_tools_refuse_to_overwrite_foreign_entries(tmp_path, corpus):
    root, tok = corpus
    out = tmp_path / "out"
    (out / "web__a.jsonl").mkdir(parents=True)  # the name tokenize gives corpus/web/a.jsonl
    (out / "web__a.jsonl" / "mine.txt").write_text("keep")
    with pytest.raises(SystemExit, match=r"out/web__a.jsonl exists and was not written by tokenize"):
        tokenize_cli.main(["--inputs", str(root), "--tokenizer", str(tok), "--out", str(out)])
    assert (out / "web__a.jsonl" / "mine.txt").read_text() == "keep"
    assert sorted(p.name for p in out.iterdir()) == ["web__a.jsonl"]  # refused before writing anything

    tokenize([str(root)], str(tok), str(tmp_path / "tokenized"))
    sampled = tmp_path / "sampled"
    sampled.mkdir()
    (sampled / "tokens.npy").write_bytes(b"someone else's")
    with pytest.raises(SystemExit, match=r"sampled/tokens.npy exists and was not written by sample_tokenized"):
        sample_cli.main([f"tokenized_path={tmp_path / 'tokenized'}", f"output_path={sampled}", "context_size=64"])
    assert (sampled / "tokens.npy").read_bytes() == b"someone else's"


@pytest.mark.parametrize("where", ["same", "inside"])
def test_output_folder_in_an_input_is_refused(tmp_path, corpus, where):
    root, tok = corpus
    out = root if where == "same" else root / "web" / "tokenized"
    before = snapshot(root)
    with pytest.raises(SystemExit, match=r"--out .* lies inside the input .*corpus"):
        tokenize_cli.main(["--inputs", str(root), "--tokenizer", str(tok), "--out", str(out)])
    assert snapshot(root) == before

    tokenized = tmp_path / "tokenized"
    tokenize([str(root)], str(tok), str(tokenized))
    before = snapshot(tokenized)
    out = tokenized if where == "same" else tokenized / "web"
    with pytest.raises(SystemExit, match=r"output_path .* lies inside the input .*tokenized"):
        sample_cli.main([f"tokenized_path={tokenized}", f"output_path={out}", "context_size=64"])
    assert snapshot(tokenized) == before  # the tokenizer.json the old code deleted is still there
