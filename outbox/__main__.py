"""`python -m outbox` runs the command-line interface."""

from outbox.cli import main

raise SystemExit(main())
