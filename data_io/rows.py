"""Source discovery and row reading: JSONL or Parquet rows {"instruction", "response", "condition"}.

`condition` is optional: a comma list ("cot,synth") or a list of names; missing or null means
`direct`.
"""

import json
from pathlib import Path
from typing import Iterator

from data_io import DataError

SOURCE_SUFFIXES = (".jsonl", ".parquet")
DEFAULT_CONDITION = "direct"


def find_sources(paths: list[str]) -> list[tuple[Path, str]]:
    """(file, name) per source file, sorted by name. Folders are searched recursively; `name` is the
    path below the given folder with `/` flattened to `__` as data_io names its tokenized folders
    ("SYNTH/part1.jsonl" -> "SYNTH__part1.jsonl"), so prefix rules like `SYNTH__` match. A file
    given directly is named by its file name."""
    found: dict[str, Path] = {}
    for given in map(Path, paths):
        if given.is_file():
            files = [(given, given.name)]
        elif given.is_dir():
            files = [(f, f.relative_to(given).as_posix().replace("/", "__")) for f in given.rglob("*")
                     if f.is_file() and f.suffix in SOURCE_SUFFIXES]
        else:
            raise DataError(f"{given}: no such file or folder; pass JSONL/Parquet files or folders")
        for file, name in files:
            if file.suffix not in SOURCE_SUFFIXES:
                raise DataError(f"{file}: unsupported file type; sources are {', '.join(SOURCE_SUFFIXES)}")
            if name in found and found[name] != file:
                raise DataError(f"{file} and {found[name]} would share the output name {name!r}; "
                                "pass their common parent folder instead")
            found[name] = file
    if not found:
        raise DataError(f"no {'/'.join(SOURCE_SUFFIXES)} files under {', '.join(paths)}")
    return [(found[n], n) for n in sorted(found)]


def parse_conditions(value, where: str) -> list[str]:
    if value is None:
        return [DEFAULT_CONDITION]
    if isinstance(value, str):
        names = [c.strip() for c in value.split(",") if c.strip()]
    elif isinstance(value, list) and all(isinstance(c, str) for c in value):
        names = [c.strip() for c in value if c.strip()]
    else:
        raise DataError(f"{where}: field 'condition' must be a comma list string or a list of "
                        f"strings, got {value!r}")
    return names or [DEFAULT_CONDITION]


def _check_row(row, where: str) -> tuple[str, str, list[str]]:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be an object with 'instruction' and 'response', got {type(row).__name__}")
    for field in ("instruction", "response"):
        if not isinstance(row.get(field), str):
            problem = "is missing" if row.get(field) is None else f"must be a string, got {type(row[field]).__name__}"
            raise DataError(f"{where}: field {field!r} {problem}; every row needs string "
                            "'instruction' and 'response' fields")
        try:
            row[field].encode("utf-8")
        except UnicodeEncodeError as err:  # JSON allows a lone surrogate escape such as "\ud800"
            raise DataError(f"{where}: field {field!r} holds a lone UTF-16 surrogate at character {err.start} "
                            "(an unpaired \\ud800-\\udfff escape); fix or drop the row") from None
    return row["instruction"], row["response"], parse_conditions(row.get("condition"), where)


def read_rows(file: Path) -> Iterator[tuple[str, str, str, list[str]]]:
    """Yields (where, instruction, response, conditions); `where` ("file:line" or "file row N")
    is for error messages."""
    if file.suffix == ".jsonl":
        with open(file, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as err:
                    raise DataError(f"{file}:{line_no}: not UTF-8 ({err.reason} at byte {err.start}); "
                                    "re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{file}:{line_no}: not valid JSON ({err}); each line must be one "
                                    'object like {"instruction": ..., "response": ...}') from None
                except RecursionError:
                    raise DataError(f"{file}:{line_no}: JSON nested too deeply to read; a row is one object "
                                    'like {"instruction": ..., "response": ...}') from None
                yield f"{file}:{line_no}", *_check_row(row, f"{file}:{line_no}")
    else:
        import pyarrow.parquet as pq

        table = pq.ParquetFile(file)
        missing = {"instruction", "response"} - set(table.schema_arrow.names)
        if missing:
            raise DataError(f"{file}: Parquet columns {sorted(missing)} are missing; rows need "
                            "'instruction' and 'response' (and optionally 'condition')")
        row_no = 0
        for batch in table.iter_batches(batch_size=8192):
            for row in batch.to_pylist():
                row_no += 1
                yield f"{file} row {row_no}", *_check_row(row, f"{file} row {row_no}")


def count_lines(file: Path) -> int | None:
    """Row count for a progress bar (None when unknown cheaply)."""
    if file.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(file).metadata.num_rows
    with open(file, "rb") as f:
        return sum(1 for _ in f)
