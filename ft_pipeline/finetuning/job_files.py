"""A job's files as drops of its task, in the task's raw folder (emptied first: the task trains on exactly the job's
files). Each file is a drop named `<file id>.jsonl`:

- supervised: the training file and the validation file are SFT drops; the validation file's drop is the split's
  holdout (`holdout_drops` of train_holdout_split), so its rows are the holdout and the training file's the train
  set, as OpenAI uses them.
- dpo: each file is a preference drop (`preferences/<file id>.jsonl`, read by preference_pairs) and, made from it,
  an SFT drop of its prompts with their preferred outputs (OpenAI's advice: SFT on the preferred answers, then
  DPO from that model). The validation file's drops are the holdout of both the split and preference_pairs.

The SFT drop made from a preference file keeps its lines: line N is row N's prompt and preferred output, or row N
as it was when it is no pair (cleaning then quarantines it at that line), so a quarantine or an erasure names the
line of the file the user sent."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

PREFERENCES = "preferences"  # the raw folder's subfolder of preference drops (defs/preference.py)


@dataclass
class JobDrops:
    sft: list[str]  # the SFT drops' file names in the task's raw folder, training file first
    holdout: list[str]  # the validation file's drop (partition key): the holdout of the split and of the pairs
    preference: list[str]  # the preference drops' file names under preferences/ (DPO), training file first

    @property
    def erasable(self) -> list[str]:
        """Every drop as `ft-pipeline forget --drop` names it."""
        return self.sft + [f"{PREFERENCES}/{name}" for name in self.preference]


def drop_name(file_id: str) -> str:
    return f"{file_id}.jsonl"


def holdout_drops(validation_file: str | None) -> list[str]:
    """The partition keys of the drops whose rows are the holdout: the validation file's, or none."""
    from ft_pipeline.data.drop_files import drop_key

    return [drop_key(drop_name(validation_file))] if validation_file else []


def sft_rows(path: Path) -> bytes:
    """A preference file's rows as SFT chat rows (`messages`: the prompt and the preferred output), line for
    line."""
    from ft_pipeline.data import formats
    from ft_pipeline.data.errors import RowError
    from ft_pipeline.preference import pair_formats

    parsed = formats.read_drop(Path(path))
    fmt = pair_formats.detect_format(parsed.rows, path)
    lines = {}
    for row in parsed.rows:
        try:
            pair = pair_formats.to_pair(row.data, fmt) if row.error is None else None
        except RowError:
            pair = None
        lines[row.line] = (json.dumps({"messages": pair["prompt"] + pair["chosen"]}, ensure_ascii=False)
                           if pair else row.text)
    return "".join(lines.get(i, "") + "\n" for i in range(1, max(lines, default=0) + 1)).encode()


def lay_out(raw: Path, files: dict[str, Path], method: str, validation: str | None = None) -> JobDrops:
    """Write the drops of `files` (file id -> its stored path, the training file first) into the task's raw folder
    `raw`, emptied first, for a job of `method` (supervised or dpo); `validation`: the id of the validation file."""
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    names = {file_id: drop_name(file_id) for file_id in files}
    if method == "dpo":
        (raw / PREFERENCES).mkdir()
        for file_id, path in files.items():
            shutil.copyfile(path, raw / PREFERENCES / names[file_id])
            (raw / names[file_id]).write_bytes(sft_rows(path))
    else:
        for file_id, path in files.items():
            shutil.copyfile(path, raw / names[file_id])
    return JobDrops(sft=list(names.values()), holdout=holdout_drops(validation),
                    preference=list(names.values()) if method == "dpo" else [])
