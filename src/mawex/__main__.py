"""``python -m mawex``."""

from __future__ import annotations

from mawex.cli.main import main

if __name__ == "__main__":
    main()
