"""What every benchmark's committed output shares: headed by its command, printed and written."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional, Sequence


def command() -> str:
    return f"$ python bench/{Path(sys.argv[0]).name} {' '.join(shlex.quote(x) for x in sys.argv[1:])}".rstrip()


def emit(lines: Sequence[str], out: Optional[str]) -> None:
    text = "\n".join(lines) + "\n"
    print(text, end="")
    if out:
        Path(out).write_text(text)
