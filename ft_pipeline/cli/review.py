"""`ft-pipeline review`: a person walks through the stored completions that have no verdict yet, newest first,
and accepts, corrects or rejects each (traffic/store.py). Every verdict is written the moment it is given, with
who gave it and when, so quitting anywhere and running it again goes on where it stopped. A metadata update
through the API (`review: accepted|rejected`, `correction: ...`) records the same verdict fields."""

from __future__ import annotations

import getpass
import os
import shlex
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter

KEYS = "[a]ccept  [c]orrect  [r]eject  [s]kip  [q]uit"


def add_parser(sub) -> None:
    rv = sub.add_parser("review", help="review stored completions without a verdict, newest first: accept, correct "
                                       "($EDITOR on the answer, or a line), reject, skip, quit (resumable; see "
                                       "docs/serving.md)")
    rv.add_argument("--model", help="only completions of this model id (as asked, or NAME/VERSION that answered)")
    rv.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                    help="only completions whose metadata has this pair (repeatable)")
    rv.add_argument("--reviewer", help="who reviews (default: $USER)")
    rv.add_argument("--store-path", help="the store (default: $FT_PIPELINE_STORE_PATH or "
                                         "<home>/traffic/completions.db)")


def _metadata(pairs: list[str]) -> dict[str, str]:
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise SystemExit(f"ft-pipeline review: --metadata takes KEY=VALUE, not {p!r}")
        out[key] = value
    return out


def _show(row: dict, n: int, out) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(row["created"]))
    lp = "" if row["mean_logprob"] is None else f"  mean logprob {row['mean_logprob']:.2f}"
    print(f"\n── {n}. {row['id']}  {when}  {row['model']} (version {row['version']})  "
          f"finish {row['finish_reason']}{lp}", file=out)
    if row["metadata"]:
        print("   metadata: " + ", ".join(f"{k}={v}" for k, v in row["metadata"].items()), file=out)
    for m in row["messages"]:
        print(textwrap.indent(m["content"], f"   {m['role']:>9}: ", lambda _: True), file=out)
    print(textwrap.indent(row["answer"] or "(empty)", "  * answer: ", lambda _: True), file=out)


def _edit(answer: str) -> str | None:
    """The answer opened in $VISUAL or $EDITOR, or a line typed at the prompt when neither is set; None when
    nothing usable came back (unchanged or empty)."""
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR")
    if not editor:
        text = input("correction (one line, empty to go back): ").strip()
        return text or None
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False, encoding="utf-8") as f:
        f.write(answer)
    try:
        subprocess.run([*shlex.split(editor), f.name], check=True)
        with open(f.name, encoding="utf-8") as fh:
            text = fh.read().strip()
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"the editor failed ({e}); nothing recorded", file=sys.stderr)
        return None
    finally:
        os.unlink(f.name)
    return text if text and text != answer.strip() else None


def main(args) -> int:
    from ft_pipeline.traffic.store import CompletionStore

    store = CompletionStore(args.store_path or os.environ.get("FT_PIPELINE_STORE_PATH") or None)
    reviewer = args.reviewer or os.environ.get("USER") or getpass.getuser()
    md, out = _metadata(args.metadata), sys.stdout
    done: Counter = Counter()
    after, n, quit_ = None, 0, False
    print(f"reviewing {store.path} as {reviewer}; newest first; {KEYS}", file=out)
    while not quit_:
        rows, _ = store.list(args.model, md, after=after, limit=20, order="desc", unreviewed=True)
        if not rows:
            break
        for row in rows:
            after, n = row["id"], n + 1
            _show(row, n, out)
            while True:
                try:
                    key = input(f"{KEYS}: ").strip().lower()[:1]
                except EOFError:
                    key = "q"
                if key == "q":
                    quit_ = True
                elif key == "s":
                    done["skipped"] += 1
                elif key in ("a", "r"):
                    store.set_verdict(row["id"], "accepted" if key == "a" else "rejected", None, reviewer)
                    done["accepted" if key == "a" else "rejected"] += 1
                elif key == "c":
                    if (text := _edit(row["answer"])) is None:
                        print("no correction: nothing recorded", file=out)
                        continue
                    store.set_verdict(row["id"], "corrected", text, reviewer)
                    done["corrected"] += 1
                else:
                    continue
                break
            if quit_:
                break
    left = len(store.list(args.model, md, limit=100, unreviewed=True)[0])
    print(f"\n{done['accepted']} accepted, {done['corrected']} corrected, {done['rejected']} rejected, "
          f"{done['skipped']} skipped; {left if left < 100 else '100+'} without a verdict", file=out)
    store.close()
    return 0
