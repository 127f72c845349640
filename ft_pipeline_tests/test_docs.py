"""The README and the docs/ pages it links: every relative link reaches a file of the checkout and every #anchor
a heading of its page (GitHub's anchor rules), so a moved section or a renamed file fails here, not for a reader."""

import re
import unicodedata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fence = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        elif not fence:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, code marks and punctuation dropped, spaces to hyphens."""
    h = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().replace("`", "").lower())
    return "".join(c for c in h if c.isalnum() or c in " -_" or unicodedata.category(c).startswith("L")
                   ).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in _prose(page.read_text()):
        if m := re.match(r"#{1,6}\s+(.*)", line):
            s = slug(m.group(1))
            seen[s] = seen.get(s, -1) + 1
    return {s if n == 0 else f"{s}-{n}" for s, count in seen.items() for n in range(count + 1)}


def broken_links(page: Path) -> list[str]:
    bad = []
    for target in re.findall(r"\]\(([^)\s]+)\)", "\n".join(_prose(page.read_text()))):
        if re.match(r"https?://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading #{anchor} in {dest.name}")
    return bad


def test_every_link_of_the_readme_and_the_docs_reaches_its_file_and_heading():
    assert len(PAGES) > 5  # the README and its docs pages
    bad = {str(p.relative_to(ROOT)): b for p in PAGES if (b := broken_links(p))}
    assert not bad


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 200
    assert "make run" in text and "make test" in text
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)", text))
    assert linked == {f"docs/{p.name}" for p in PAGES[1:]}  # every docs page is reachable from the front page


def test_the_link_check_finds_a_missing_file_and_a_missing_heading(tmp_path):
    page = tmp_path / "p.md"
    (tmp_path / "there.md").write_text("# Here it is\n")
    page.write_text("[a](there.md#here-it-is) [b](missing.md) [c](there.md#nowhere)\n```\n[d](inside-code.md)\n```\n")
    assert broken_links(page) == ["missing.md: no such file", "there.md#nowhere: no heading #nowhere in there.md"]
