"""train_tokenizer's data_io options: NFC, the regex pre-split, unigram, the per-file cap from the
prefix config and the truncate length. Expectations follow data_io's train_tokenizer rules and are
read through the raw HF tokenizer."""

import json

import pytest
from tokenizers import Tokenizer

from data_io.train_tokenizer import train_tokenizer

WORDS = "The river runs quietly past the old mill, and we'll see 2024 boats; don't they?"


def write(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"instruction": i, "response": r}) + "\n" for i, r in rows))


@pytest.mark.parametrize("tokenizer_type", ["bpe", "unigram"])
def test_nfc_pre_split_and_round_trip(tmp_path, tokenizer_type):
    write(tmp_path / "c" / "a.jsonl", [(WORDS, WORDS[::-1])] * 30)
    tok = Tokenizer.from_file(str(train_tokenizer([str(tmp_path / "c")], str(tmp_path / "t"), vocab_size=300,
                                                  tokenizer_type=tokenizer_type)))
    assert json.loads(tok.to_str())["model"]["type"] == {"bpe": "BPE", "unigram": "Unigram"}[tokenizer_type]
    assert tok.decode(tok.encode(WORDS).ids) == WORDS
    assert tok.decode(tok.encode("cafe\u0301").ids) == "caf\u00e9"  # NFC composes e + combining acute
    pieces = [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("we'll 2024")]
    assert pieces == ["we", "'ll", "Ġ", "2", "0", "2", "4"]  # contraction apart, one digit each
    assert len(tok.encode("98765").ids) == 5


def test_per_file_cap_and_truncate_length(tmp_path):
    write(tmp_path / "c" / "capped" / "a.jsonl", [("qqxx", "qqxx")] * 20)
    write(tmp_path / "c" / "other.jsonl", [("ab cd", "ef")] * 3)
    rules = tmp_path / "rules.yaml"
    rules.write_text("- prefix: capped__\n  max_per_file: 1\n")

    def pieces(**options):
        out = train_tokenizer([str(tmp_path / "c")], str(tmp_path / "t"), vocab_size=300, **options)
        return len(Tokenizer.from_file(str(out)).encode("qqxx").ids)

    assert pieces() < 4  # 40 documents: qq and xx merge (min_frequency 2)
    # Capped to limit_mul_factor x max_per_file = 1 document: every pair seen once, no merge.
    assert pieces(prefix_config=str(rules), limit_mul_factor=1) == 4
    assert pieces(prefix_config=str(rules), limit_mul_factor=10) < 4
    assert pieces(truncate_len=1) == 4  # documents cut to "q": no pair at all
