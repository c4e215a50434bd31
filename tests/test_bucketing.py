"""Bucketing: the same unit lands in the same bucket everywhere, exactly as flagd's
``fractional`` puts it (spec §4)."""

from __future__ import annotations

import importlib.util
import json
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openfeature.contrib.tools.flagd.core.targeting.custom_ops import (
    fractional as fractional_v2,
)

from openfeature_canary.bucketing import (
    SCHEMES,
    bucket,
    in_rollout,
    percent_to_basis_points,
)

ROOT = Path(__file__).resolve().parent.parent
FLAGD_CORE_1 = (
    ROOT / ".ci-deps/flagd-core-1/openfeature/contrib/tools/flagd/core/targeting/custom_ops.py"
)
FLAG = "dataservice-read-canary"
OTHER_FLAG = "dataservice-user-read-canary"
PERCENTS = (0, 0.5, 5, 25, 50, 99.99, 100)


def _units(n: int, seed: int) -> list[str]:
    """``n`` UUID-like request ids, reproducible so that a statistical assert is stable."""
    rng = random.Random(seed)
    return [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n)]


@pytest.fixture(scope="module")
def units_100k() -> list[str]:
    return _units(100_000, seed=2024)


@pytest.fixture(scope="module")
def units_10k() -> list[str]:
    return _units(10_000, seed=7)


@pytest.fixture(scope="module")
def fractional_v1() -> Callable[..., Any]:
    """flagd-core 1.0.0's ``fractional``, loaded from the side folder that scripts/test.sh fills
    (1.x cannot be installed beside 2.x)."""
    if not FLAGD_CORE_1.is_file():
        pytest.fail(
            f"flagd-core 1.0.0 is missing ({FLAGD_CORE_1.relative_to(ROOT)}): "
            "run `bash scripts/test.sh` once, it installs it into .ci-deps/flagd-core-1"
        )
    spec = importlib.util.spec_from_file_location("_flagd_core_1_custom_ops", FLAGD_CORE_1)
    assert spec is not None and spec.loader is not None
    module: ModuleType = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn: Callable[..., Any] = module.fractional
    return fn


def _weights(percent: float) -> tuple[list[object], list[object]]:
    bp = round(percent * 100)
    return ["on", bp], ["off", 10000 - bp]


# ------------------------------------------------------------------ cross-process determinism

_CHILD = """
import json, sys
from openfeature_canary.bucketing import bucket
units = json.load(sys.stdin)
print(json.dumps({
    "hash": hash("dataservice-read-canary"),
    "flagd": [bucket("dataservice-read-canary", u, "flagd") for u in units],
    "cbor": [bucket("dataservice-read-canary", u, "flagd-cbor") for u in units],
}))
"""


def test_bucket_subprocesses_with_different_hash_seeds_agree_with_this_process() -> None:
    units = _units(1000, seed=11)
    expected = {
        "flagd": [bucket(FLAG, u, "flagd") for u in units],
        "cbor": [bucket(FLAG, u, "flagd-cbor") for u in units],
    }
    seen_hashes = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", _CHILD],
            input=json.dumps(units),
            capture_output=True,
            text=True,
            env=env,
            check=True,
            timeout=60,
        )
        child = json.loads(out.stdout)
        seen_hashes.add(child["hash"])
        assert child["flagd"] == expected["flagd"], f"PYTHONHASHSEED={seed}: flagd buckets differ"
        assert child["cbor"] == expected["cbor"], f"PYTHONHASHSEED={seed}: cbor buckets differ"
    # The seeds really did change str hashing: the old hash(request_id) scheme would differ.
    assert len(seen_hashes) == 3


def test_bucket_known_value_is_stable_across_releases() -> None:
    # Pinned values: a change here moves every cohort of every deployed rollout.
    assert bucket(FLAG, "user-42") == 7478
    assert bucket(FLAG, "user-42", "flagd-cbor") == bucket(FLAG, "user-42", "flagd-cbor")
    assert not in_rollout(FLAG, "user-42", 50)
    assert in_rollout(FLAG, "user-42", 75)


# ------------------------------------------------------------------ equality with flagd


@pytest.mark.parametrize("percent", PERCENTS)
def test_in_rollout_flagd_cbor_scheme_equals_flagd_core_2_fractional(
    units_10k: list[str], percent: float
) -> None:
    on, off = _weights(percent)
    mismatches = [
        u
        for u in units_10k
        if in_rollout(FLAG, u, percent, "flagd-cbor")
        != (fractional_v2({"targetingKey": u, "$flagd": {"flagKey": FLAG}}, on, off) == "on")
    ]
    assert mismatches == []


@pytest.mark.parametrize("percent", PERCENTS)
def test_in_rollout_flagd_scheme_equals_flagd_core_1_fractional_shorthand(
    units_10k: list[str], percent: float, fractional_v1: Callable[..., Any]
) -> None:
    on, off = _weights(percent)
    mismatches = [
        u
        for u in units_10k
        if in_rollout(FLAG, u, percent, "flagd")
        != (fractional_v1({"targetingKey": u, "$flagd": {"flagKey": FLAG}}, on, off) == "on")
    ]
    assert mismatches == []


@pytest.mark.parametrize("percent", (5, 50, 99.99))
def test_in_rollout_flagd_scheme_equals_flagd_core_1_fractional_explicit_key(
    units_10k: list[str], percent: float, fractional_v1: Callable[..., Any]
) -> None:
    on, off = _weights(percent)
    mismatches = [
        u
        for u in units_10k
        if in_rollout(OTHER_FLAG, u, percent, "flagd")
        != (fractional_v1({}, OTHER_FLAG + u, on, off) == "on")
    ]
    assert mismatches == []


def test_bucket_schemes_differ_so_the_scheme_choice_matters(units_10k: list[str]) -> None:
    same = sum(bucket(FLAG, u, "flagd") == bucket(FLAG, u, "flagd-cbor") for u in units_10k)
    assert same < 50  # chance agreement is ~1 in 10 000 per unit


# ------------------------------------------------------------------ properties


@settings(max_examples=200, deadline=None)
@given(
    unit=st.text(min_size=1, max_size=40),
    p1=st.floats(min_value=0, max_value=100, allow_nan=False),
    p2=st.floats(min_value=0, max_value=100, allow_nan=False),
    scheme=st.sampled_from(SCHEMES),
)
def test_in_rollout_raising_percent_only_adds_units(
    unit: str, p1: float, p2: float, scheme: str
) -> None:
    low, high = sorted((p1, p2))
    if in_rollout(FLAG, unit, low, scheme):
        assert in_rollout(FLAG, unit, high, scheme)


@settings(max_examples=200, deadline=None)
@given(unit=st.text(min_size=1, max_size=40), scheme=st.sampled_from(SCHEMES))
def test_bucket_any_unit_is_within_basis_points(unit: str, scheme: str) -> None:
    assert 0 <= bucket(FLAG, unit, scheme) < 10000
    assert not in_rollout(FLAG, unit, 0, scheme)
    assert in_rollout(FLAG, unit, 100, scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_in_rollout_two_flags_at_half_are_independent(units_100k: list[str], scheme: str) -> None:
    a = [in_rollout(FLAG, u, 50, scheme) for u in units_100k]
    b = [in_rollout(OTHER_FLAG, u, 50, scheme) for u in units_100k]
    joint = sum(x and y for x, y in zip(a, b, strict=True)) / len(units_100k)
    # Same cohort (salt ignored) would give 50 %, disjoint cohorts 0 %.
    assert joint == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_in_rollout_share_over_100k_units_is_within_0_3_points(
    units_100k: list[str], scheme: str
) -> None:
    buckets = [bucket(FLAG, u, scheme) for u in units_100k]
    for percent in (0.5, 5, 25, 50, 75, 99.99):
        bp = percent_to_basis_points(percent)
        share = 100 * sum(b < bp for b in buckets) / len(buckets)
        assert abs(share - percent) <= 0.3, f"{scheme} at {percent} %: observed {share:.3f} %"


# ------------------------------------------------------------------ inputs


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bucket_int_and_uuid_units_equal_their_str(scheme: str) -> None:
    u = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert bucket(FLAG, 42, scheme) == bucket(FLAG, "42", scheme)
    assert bucket(FLAG, u, scheme) == bucket(FLAG, str(u), scheme)
    assert in_rollout(FLAG, 42, 50, scheme) == in_rollout(FLAG, "42", 50, scheme)


@pytest.mark.parametrize("scheme", SCHEMES)
def test_bucket_empty_unit_raises_value_error(scheme: str) -> None:
    with pytest.raises(ValueError, match="empty"):
        bucket(FLAG, "", scheme)
    with pytest.raises(ValueError, match="empty"):
        in_rollout(FLAG, "", 50, scheme)


def test_bucket_unknown_scheme_raises_value_error_listing_schemes() -> None:
    with pytest.raises(ValueError, match=r"unknown bucketing scheme 'murmur'.*flagd-cbor"):
        bucket(FLAG, "u", "murmur")


@pytest.mark.parametrize(
    ("percent", "bp"), [(0, 0), (0.25, 25), (5, 500), (99.99, 9999), (100, 10000)]
)
def test_percent_to_basis_points_rounds_to_hundredths(percent: float, bp: int) -> None:
    assert percent_to_basis_points(percent) == bp


@pytest.mark.parametrize("percent", (-1, 100.01, float("nan")))
def test_percent_to_basis_points_out_of_range_raises_value_error(percent: float) -> None:
    with pytest.raises(ValueError, match="percent"):
        percent_to_basis_points(percent)
