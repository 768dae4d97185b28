"""``python -m conveyor``: the command line."""

from conveyor._cli import main

raise SystemExit(main())
