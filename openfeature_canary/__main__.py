"""``python -m openfeature_canary`` is the ``openfeature-canary`` command."""

from openfeature_canary.cli import main

raise SystemExit(main())
