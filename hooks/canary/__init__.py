"""OpenFeature contrib hooks for canary rollouts: ``MetricsHook`` and ``PolicyHook``."""

from openfeature.contrib.hook.canary.metrics import MetricsHook
from openfeature.contrib.hook.canary.policy import PolicyHook, PolicyTarget, ServesRollout

__all__ = ["MetricsHook", "PolicyHook", "PolicyTarget", "ServesRollout"]
