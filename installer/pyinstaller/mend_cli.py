"""Entry point of the frozen `mend` command (the same as the installed engine.cli:main)."""
from __future__ import annotations

import sys

from engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
