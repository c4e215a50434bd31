"""OpenFeature contrib hooks for canary rollouts: ``MetricsHook`` (and ``PolicyHook``)."""

from openfeature.contrib.hook.canary.metrics import MetricsHook

__all__ = ["MetricsHook"]
