"""The features' medians and percentiles equal numpy's, to the last bit.

homepot.insights.features computes them from one sort instead of ``np.median`` and
``np.percentile`` (whose wrappers cost most of a risk pass on a device's small arrays); a
baseline or a jitter that differed in its last bit would change risks, rankings and the
held-out figures of benchmarks/risk.py, so the test asks for equality, not closeness (a
zero's sign aside: -0.0 == 0.0, and which of the two a tie puts in the middle is the
sort's choice).
"""

from __future__ import annotations

import numpy as np
import pytest

from homepot.insights.features import median_of, median_of_sorted, percentile_of_sorted


def _samples() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    arrays: list[np.ndarray] = []
    for size in [*range(1, 40), 95, 96, 97, 288, 1439, 1440, 2880]:
        arrays += [
            rng.uniform(0, 100, size),  # a percentage
            rng.lognormal(4, 1.5, size),  # a latency, long-tailed
            rng.normal(0, 1e-9, size),  # tiny values of both signs
            rng.integers(0, 5, size).astype(float),  # many ties
            np.round(rng.normal(50, 20, size), 1),  # what a terminal reports
            np.full(size, 42.5),  # a flat line
            np.round(rng.normal(0, 0.04, size), 1),  # rounded near zero: -0.0 and 0.0
        ]
    return arrays


SAMPLES = _samples()


def test_the_median_equals_numpys() -> None:
    for values in SAMPLES:
        expected = float(np.median(values))
        assert median_of(values) == expected, values
        assert median_of_sorted(np.sort(values)) == expected


@pytest.mark.parametrize("q", [0, 5, 25, 50, 90, 95, 99, 99.9, 100])
def test_a_percentile_equals_numpys_linear_interpolation(q: float) -> None:
    for values in SAMPLES:
        assert percentile_of_sorted(np.sort(values), q) == float(np.percentile(values, q)), (
            q,
            values,
        )
