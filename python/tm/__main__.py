"""Entry point for ``python -m tm``."""

from tm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
