"""Drop files in the raw folder and their partition keys. Any file name is a drop: a name that is already a
safe key (letters, digits, '.', '_', '-') is its own key, so the keys of existing drops never change; any other
name gets a readable ASCII slug plus a hash of the name, so that no two names share a key. A key is also a file
name under the home folder, so it can never hold a path separator or '..'."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from pathlib import Path

from ft_pipeline.data.errors import DropError

SUPPORTED_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
DROP_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_drop_key(key: str, where: object = "drop") -> str:
    """A partition key is a file name in the data folders (and can be typed in the UI): it must not escape them."""
    if not DROP_NAME_RE.match(key) or ".." in key:
        raise DropError(f"{where}: {key!r} is not a valid drop name "
                        "(use letters, digits, '.', '_' and '-', starting with a letter or digit; no '..')")
    return key


def drop_key(name: str) -> str:
    """The partition key of the drop file `name`: the name itself when it is a valid key, else e.g.
    'Support export (Nov 2026).csv' -> 'Support-export-Nov-2026-<8 hex>.csv'. The hash is of the NFC form of the
    name, so a name copied from macOS (which stores NFD) keeps its key."""
    if DROP_NAME_RE.match(name) and ".." not in name:
        return name
    name = unicodedata.normalize("NFC", name)
    dot = name.rfind(".")
    suffix = name[dot:].lower() if dot > 0 and name[dot:].lower() in SUPPORTED_SUFFIXES else ""
    ascii_stem = unicodedata.normalize("NFKD", name[:len(name) - len(suffix)]).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9]+", "-", ascii_stem).strip("-")[:64].rstrip("-") or "drop"
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{slug}-{digest}{suffix}"


def find_drops(raw_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """Drop files in the raw folder keyed by partition key (hidden files and other extensions are ignored), and a
    message for each file left out because another file has its key (the one named as the key wins)."""
    drops: dict[str, Path] = {}
    problems = []
    raw_dir = Path(raw_dir)
    for p in sorted(raw_dir.iterdir()) if raw_dir.exists() else []:
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in SUPPORTED_SUFFIXES:
            key = drop_key(p.name)
            if key in drops:
                keep, skip = (p, drops[key]) if p.name == key else (drops[key], p)
                drops[key] = keep
                problems.append(f"{skip}: left out: its partition key {key!r} is that of {keep.name!r}; rename one")
            else:
                drops[key] = p
    return drops, problems


def raw_path(raw_dir: Path, key: str) -> Path:
    """The file of the drop `key` in the raw folder; raw_dir/key (absent) when no file has that key any more."""
    direct = Path(raw_dir) / check_drop_key(key, "partition key")
    if direct.is_file():
        return direct
    return find_drops(raw_dir)[0].get(key, direct)
