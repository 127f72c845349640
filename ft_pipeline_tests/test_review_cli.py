"""`ft-pipeline review` driven from a pseudo-terminal, as a person would: newest first, accept, correct in
$EDITOR or on a line, reject, skip, quit, and a second run that resumes with what is left."""

import os
import pty
import select
import subprocess
import sys
import time

from ft_pipeline.traffic.capture import record
from ft_pipeline.traffic.store import CompletionStore

T0 = int(time.time()) - 100


def fill(path) -> CompletionStore:
    store = CompletionStore(path)
    for i in range(5):
        store.insert(record(id=f"chatcmpl-{i}", created=T0 + i, model="ft-pipeline-adapter",
                            registered_model="ft-pipeline-adapter", version="1",
                            messages=[{"role": "user", "content": f"question number {i}"}], answer=f"answer number {i}",
                            finish_reason="stop", prompt_tokens=4, completion_tokens=3, latency_ms=5.0,
                            mean_logprob=-1.25, metadata={"app": "other" if i == 4 else "demo"}))
    return store


class Term:
    """The review command on a pseudo-terminal: `expect` reads until a text appears, `send` types a line."""

    def __init__(self, args: list[str], env: dict):
        master, slave = pty.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "ft_pipeline.cli", "review", *args], stdin=slave,
                                     stdout=slave, stderr=slave, env=env, close_fds=True)
        os.close(slave)
        self.fd, self.seen = master, ""

    def expect(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while text not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"never saw {text!r}; the terminal shows:\n{self.seen[-2000:]}"
            if select.select([self.fd], [], [], min(left, 0.5))[0]:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # the process ended and closed the terminal
                    chunk = b""
                if not chunk and self.proc.poll() is not None:
                    assert text in self.seen, f"ended without {text!r}:\n{self.seen[-2000:]}"
                self.seen += chunk.decode(errors="replace")
        at = self.seen.index(text) + len(text)
        before, self.seen = self.seen[:at], self.seen[at:]
        return before

    def send(self, line: str) -> None:
        os.write(self.fd, (line + "\n").encode())

    def close(self) -> int:
        code = self.proc.wait(timeout=60)
        os.close(self.fd)
        return code


def test_review_from_a_terminal_is_newest_first_and_resumable(tmp_path):
    db = tmp_path / "completions.db"
    store = fill(db)
    env = {**os.environ, "FT_PIPELINE_HOME": str(tmp_path / "home"), "USER": "ana",
           "EDITOR": f"{sys.executable} -c \"import sys; open(sys.argv[1], 'w').write('Refund sent to you.')\""}
    env.pop("VISUAL", None)
    term = Term(["--store-path", str(db), "--metadata", "app=demo"], env)
    shown = term.expect("[q]uit: ")  # the first one shown is the newest that matches the filter (4 is app=other)
    assert "chatcmpl-3" in shown and "question number 3" in shown and "answer number 3" in shown
    assert "mean logprob -1.25" in shown and "ana" in shown
    term.send("a")
    assert "chatcmpl-2" in term.expect("[q]uit: ")
    term.send("c")  # $EDITOR writes the correction
    assert "chatcmpl-1" in term.expect("[q]uit: ")
    term.send("s")
    assert "chatcmpl-0" in term.expect("[q]uit: ")
    term.send("q")
    assert "1 accepted, 1 corrected, 0 rejected, 1 skipped; 2 without a verdict" in term.expect("verdict")
    assert term.close() == 0
    got = {r["id"]: r for r in store.list(limit=10)[0]}
    assert (got["chatcmpl-3"]["review"], got["chatcmpl-3"]["reviewer"]) == ("accepted", "ana")
    assert abs(got["chatcmpl-3"]["reviewed_at"] - time.time()) < 60
    assert (got["chatcmpl-2"]["review"], got["chatcmpl-2"]["correction"]) == ("corrected", "Refund sent to you.")
    assert got["chatcmpl-1"]["review"] is None and got["chatcmpl-0"]["review"] is None
    assert got["chatcmpl-4"]["review"] is None

    # Again, with no editor and another reviewer: it resumes with the two left, a correction typed on a line.
    env.pop("EDITOR")
    term = Term(["--store-path", str(db), "--metadata", "app=demo", "--reviewer", "bo"], env)
    assert "chatcmpl-1" in term.expect("[q]uit: ")
    term.send("r")
    assert "chatcmpl-0" in term.expect("[q]uit: ")
    term.send("c")
    term.expect("correction (one line")
    term.send("Write to me at bo@example.com instead.")
    assert "0 accepted, 1 corrected, 1 rejected, 0 skipped; 0 without a verdict" in term.expect("verdict")
    assert term.close() == 0
    got = {r["id"]: r for r in store.list(limit=10)[0]}
    assert (got["chatcmpl-1"]["review"], got["chatcmpl-1"]["reviewer"]) == ("rejected", "bo")
    assert got["chatcmpl-0"]["correction"] == "Write to me at [EMAIL] instead."  # redacted like the answer
    assert got["chatcmpl-0"]["metadata"]["review"] == "corrected"
