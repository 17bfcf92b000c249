"""The generated sections of BENCHMARKS.md: text between ``<!-- bench:NAME:begin -->`` and
``<!-- bench:NAME:end -->``, replaced by the script that measures it (``--write``)."""

from __future__ import annotations


def write_between(path: str, name: str, text: str) -> None:
    """Replace what lies between ``name``'s markers in ``path`` with ``text``."""
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    doc = open(path).read()
    head, rest = doc.split(begin)
    _, tail = rest.split(end)
    open(path, "w").write(f"{head}{begin}\n{text}\n{end}{tail}")
