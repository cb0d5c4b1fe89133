"""Data pipeline: JSONL/Parquet rows -> tokenizer -> tokenized folders -> sampled dataset.

Steps, each runnable as `python -m data_io.<name> --help`:
  train_tokenizer   byte-level BPE or Unigram with the special tokens (text_tokenizer.py)
  tokenize          one folder of token/span arrays per source file
  sample_tokenized  the sampled dataset of docs/DESIGN.md, "Data format" (metadata.json, tokens.npy, epoch_{e}/)
  prepare_sft_data  one JSONL -> a sampled dataset for fine-tuning (tokenize + sample_tokenized)
  demo              the embedded synthetic corpus, run through the three steps above
The packing of a sampled dataset into training batches lives in dataset_new.py.
"""


class DataError(ValueError):
    """Bad input data or arguments; the message names the file, the problem and the fix."""
