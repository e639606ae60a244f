"""``python -m kinko``: the same as the ``kinko`` command."""

from __future__ import annotations

from kinko.cli.main import main

if __name__ == "__main__":
    main()
