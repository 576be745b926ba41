#!/usr/bin/env python
"""``python search.py --budget 300MFLOPs``: see ``python search.py --help`` and README.md."""
import sys

if __name__ == "__main__":
    try:
        from nas.cli import main

        sys.exit(main())
    except KeyboardInterrupt:  # Ctrl-C while the toolkit is still being imported
        sys.exit(130)
