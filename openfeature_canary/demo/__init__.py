"""``openfeature-canary demo``: the reference scenario end to end in virtual time.

Not imported by the engine: a service that only serves flags never loads it.
"""

from __future__ import annotations

from openfeature_canary.demo._demo import main, run_demo
from openfeature_canary.demo._simulation import FAULTS, Fault

__all__ = ["FAULTS", "Fault", "main", "run_demo"]
