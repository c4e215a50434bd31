"""The ``openfeature-canary`` command line (see docs/cli.md)."""

from __future__ import annotations

from openfeature_canary.cli._main import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, build_parser, main, run

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "build_parser", "main", "run"]
