"""What a data tool may write and delete: an output folder apart from its inputs, and a manifest
of the entries the tool itself wrote there, so that it replaces and prunes those and nothing else
(a user's folder of other data next to them stays untouched)."""

import json
import os
import shutil
from pathlib import Path

from data_io import DataError


def write_json_atomically(path: Path, content, indent: int = 1) -> None:
    """`content` as JSON at `path`, through a `.partial` file renamed over it: a reader (or a crash)
    sees the old file or the new one, never half of one."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(content, indent=indent) + "\n")
    os.replace(partial, path)


def check_apart(out: Path, inputs: list[str | Path], out_flag: str) -> None:
    """Refuse an output folder that is an input, lies inside an input folder, or holds an input:
    the tool would overwrite or prune its own input. (Beside an input file is fine: a file input
    is read alone, not its folder.)"""
    target = out.resolve()
    for given in map(Path, inputs):
        source = given.resolve()
        if target == source or (given.is_dir() and source in target.parents):
            raise DataError(f"{out_flag} {out} lies inside the input {given}; write to a folder outside the inputs")
        if target in source.parents:
            raise DataError(f"{out_flag} {out} holds the input {given}; write to a folder outside the inputs")


class Manifest:
    """OUT/.<tool>_manifest.json: the names (relative to OUT) the tool wrote. An entry not listed
    is someone else's: the tool refuses to replace it and never deletes it."""

    def __init__(self, out: Path, tool: str):
        self.out = out
        self.file = out / f".{tool}_manifest.json"
        self.tool = tool
        try:
            self.names = set(json.loads(self.file.read_text())["written"]) if self.file.exists() else set()
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"{self.file}: unreadable manifest ({err!r}); delete {out} or choose a new output folder") from None

    def check_free(self, names) -> None:
        """Refuse, before anything is written or deleted, if an entry to be written is someone else's."""
        for name in names:
            path = self.out / name
            if name not in self.names and (path.exists() or path.is_symlink()):
                raise DataError(f"{path} exists and was not written by {self.tool} (not in {self.file.name}; "
                                "output written before manifests existed counts as foreign too); "
                                "move it away or choose another output folder")

    def claim(self, name: str) -> Path:
        """The path of entry `name`, recorded as the tool's before anything is written there."""
        self.check_free([name])
        if name not in self.names:
            self.names.add(name)
            self._save()
        return self.out / name

    def prune(self, keep) -> int:
        """Remove the tool's entries not in `keep`; returns how many."""
        stale = sorted(self.names - set(keep))
        for name in stale:
            self.remove(name)
        return len(stale)

    def remove(self, name: str) -> None:
        path = self.out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        self.names.discard(name)
        self._save()

    def _save(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        write_json_atomically(self.file, {"written": sorted(self.names)})
