"""OpenFeature contrib provider for canary rollouts: ``CanaryProvider``."""

from openfeature.contrib.provider.canary.provider import CanaryProvider

__all__ = ["CanaryProvider"]
