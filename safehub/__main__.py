"""``python -m safehub``: the command-line interface."""

from safehub.cli import main

raise SystemExit(main())
