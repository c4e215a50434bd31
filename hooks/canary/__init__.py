"""OpenFeature contrib hooks for canary rollouts: ``MetricsHook`` and ``PolicyHook``."""

from openfeature.contrib.hook.canary.metrics import MetricsHook
from openfeature.contrib.hook.canary.policy import PolicyHook

__all__ = ["MetricsHook", "PolicyHook"]
