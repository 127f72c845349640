"""A fine-tuning file is a drop: read by the data layer's parser (data/formats.py) and converted row by row into
chat records (data/cleaning.iter_canonical), the same code the raw_examples asset runs. At upload the file must
be UTF-8 JSONL that parses (else nothing is stored); at a job's `validating_files` its rows must convert, and the
quarantine's reasons are what a job that fails there reports."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MIN_EXAMPLES = 10  # OpenAI's minimum for a training file


class InvalidFile(ValueError):
    """The file cannot be a fine-tuning file at all (not JSONL, not UTF-8, empty): one line saying why."""


@dataclass
class Validation:
    rows: int
    kept: int
    format: str
    quarantined: list[dict] = field(default_factory=list)  # {line, code, reason}

    @property
    def by_reason(self) -> dict[str, int]:
        return dict(Counter(q["code"] for q in self.quarantined))

    def problem(self, minimum: int = MIN_EXAMPLES) -> str | None:
        """Why a job cannot train on the file (None: it can)."""
        if self.kept >= minimum:
            return None
        shown = "; ".join(f"line {q['line']}: {q['reason']}" for q in self.quarantined[:5])
        more = f" (and {len(self.quarantined) - 5} more)" if len(self.quarantined) > 5 else ""
        return (f"The file has {self.kept} usable example(s) of {self.rows}; at least {minimum} are needed. "
                f"{len(self.quarantined)} row(s) quarantined{': ' + shown + more if shown else ''}.")


def read(path: Path):
    """The drop's parsed rows (data/formats.read_drop); InvalidFile when it is not a UTF-8 JSONL file that parses."""
    from ft_pipeline.data import formats

    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        raise InvalidFile(f"Invalid file format: the file must be JSONL (a .jsonl file), not "
                          f"{path.suffix or 'a file without an extension'}.")
    try:
        return formats.read_drop(path)
    except formats.DropError as e:
        raise InvalidFile(f"Invalid file format: {_without(e, path)}.") from None


def parse(path: Path, kind: str = "chat") -> Validation:
    """The rows of a JSONL file converted as the pipeline converts a drop (`chat`: conversations; `preference`:
    OpenAI's DPO pairs); InvalidFile when it is not a UTF-8 JSONL file of that kind."""
    from ft_pipeline.data import cleaning, formats

    parsed = read(path)
    convert = None
    try:
        if kind == "preference":
            from ft_pipeline.preference import pair_formats

            convert, fmt = pair_formats.to_pair, pair_formats.detect_format(parsed.rows, path)
        else:
            fmt = formats.detect_format(parsed.rows, path)
    except formats.DropError as e:
        raise InvalidFile(f"Invalid file format: {_without(e, path)}.") from None
    out = Validation(rows=len(parsed.rows), kept=0, format=fmt)
    for rec in cleaning.iter_canonical(parsed, fmt, convert):
        if "code" in rec:
            out.quarantined.append({"line": rec["line"], "code": rec["code"], "reason": rec["reason"]})
        else:
            out.kept += 1
    return out


def _without(e: Exception, path: Path) -> str:
    """The data layer's message without the (server-side) path it starts with."""
    return str(e).replace(f"{path}: ", "").replace(str(path), "the file").rstrip(".")
