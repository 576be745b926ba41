#!/usr/bin/env python
"""``python search.py --budget 300MFLOPs``: see ``python search.py --help`` and README.md."""
import sys

from nas.cli import main

if __name__ == "__main__":
    sys.exit(main())
