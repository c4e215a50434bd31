"""``python -m openfeature_canary`` is the ``openfeature-canary`` command."""

from openfeature_canary._cli import main

raise SystemExit(main())
