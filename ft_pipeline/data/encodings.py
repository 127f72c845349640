"""Text encodings of a drop file. UTF-8 is read with every byte that is not UTF-8 kept as an escape
(surrogateescape), so one bad byte costs its row, not the file; a file that is mostly not UTF-8 fails with the
likely encoding named, and a declared encoding transcodes the file to UTF-8 before it is parsed."""

from __future__ import annotations

import codecs
import re
from pathlib import Path

from ft_pipeline.data.errors import DropError

# What errors="surrogateescape" makes of a byte that is not UTF-8 (0x80-0xff); a UTF-8 decode yields no other
# surrogate, so in decoded text these are exactly the undecodable bytes.
_ESCAPED = re.compile("[\udc80-\udcff]")
HINT = "set the encoding in raw_examples' config if the file is not UTF-8"


def is_utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name == "utf-8"


def check_encoding(path: Path, encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError as e:
        raise DropError(f"{path}: unknown encoding {encoding!r} in config (e.g. utf-8, cp1252, latin-1, utf-16)") from e


def decode_utf8(raw: bytes) -> str:
    """The text of UTF-8 bytes (a leading BOM dropped), undecodable bytes kept as escapes (see `shown`)."""
    return raw.decode("utf-8-sig", errors="surrogateescape")


def first_bad_byte(text: str) -> str | None:
    """Where in `text` (from `decode_utf8`) its first undecodable byte is, as 'byte N (0xNN)', or None."""
    m = _ESCAPED.search(text)
    if m is None:
        return None
    return f"byte {len(text[:m.start()].encode('utf-8', 'surrogateescape'))} (0x{ord(m.group()) - 0xdc00:02x})"


def shown(text: str) -> str:
    """`text` with its undecodable bytes written as \\xNN: safe to store, print and hash."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def mostly_not_utf8(n_rows: int, n_bad: int, n_good_non_ascii: int) -> bool:
    """A file in another encoding, not a UTF-8 file with a damaged row or two: more than one row, and more than
    one in ten, holds bytes that are not UTF-8, and those rows outnumber the rows whose non-ASCII text is valid
    UTF-8 (a Latin-1 export has none of those)."""
    return n_bad > 1 and n_bad * 10 > n_rows and n_bad > n_good_non_ascii


def guess_encoding(raw: bytes) -> str:
    """The likely encoding of bytes that are not UTF-8: charset_normalizer's best guess, except that cp1252 (what
    Windows and Excel write in Western Europe) is named whenever it decodes the file as cleanly, since on little
    text charset_normalizer cannot tell the Western code pages apart (it ranks cp1250 first for French)."""
    import charset_normalizer

    matches = charset_normalizer.from_bytes(raw[:1 << 20])
    best = matches.best()
    if best is None:
        return "latin-1"  # decodes any bytes: the last resort
    western = [m for m in matches if "cp1252" in m.could_be_from_charset and m.chaos <= best.chaos]
    return "cp1252" if western else best.encoding


def not_utf8_error(path: Path, raw: bytes, where: str) -> DropError:
    enc = guess_encoding(raw)
    return DropError(f"{path}: {where}: the file is not UTF-8, likely {enc}; declare it in raw_examples' config "
                     f"(encoding: {enc}) or save the file as UTF-8")


def transcode(path: Path, raw: bytes, encoding: str) -> bytes:
    """The file's bytes as UTF-8, decoded as the declared `encoding` (line breaks stay where they were)."""
    try:
        return raw.decode(encoding).encode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise DropError(f"{path}: line {line}: byte {e.start} (0x{raw[e.start]:02x}) is not valid {encoding}: "
                        "is the declared encoding right?") from e
