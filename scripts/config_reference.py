"""Print the config reference (every key, its type, default and help) as a Markdown table.

    python scripts/config_reference.py            # print
    python scripts/config_reference.py --write    # refresh the table between the README markers
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from trainer.config import Config  # noqa: E402
from trainer.config.base import iter_fields  # noqa: E402

BEGIN, END = "<!-- config-reference:begin -->", "<!-- config-reference:end -->"


def table() -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, tp, default, help_text in iter_fields(Config):
        name = getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
        rows.append(f"| `{key}` | {str(name).replace('|', 'or')} | `{default!r}` | {help_text.replace('|', '/')} |")
    return "\n".join(rows)


def main() -> None:
    if "--write" not in sys.argv:
        print(table())
        return
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    text = open(path).read()
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    open(path, "w").write(f"{head}{BEGIN}\n{table()}\n{END}{tail}")


if __name__ == "__main__":
    main()
