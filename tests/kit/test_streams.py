from __future__ import annotations

from typing import get_args

import pytest

from homepot.analytics.error_logger import CATEGORIES, SEVERITIES
from homepot.analytics.models import DeviceMetrics
from homepot.analytics.schemas import (
    Category,
    DeviceMetricsQuery,
    DeviceMetricsRead,
    Severity,
)
from homepot.kit import streams


def test_a_stream_whose_filters_do_not_match_its_parameters_is_refused() -> None:
    with pytest.raises(TypeError, match=r"\['device_id', 'source'\] have no filter"):
        streams.Stream(DeviceMetrics, DeviceMetricsQuery, DeviceMetricsRead, {})
    with pytest.raises(TypeError, match=r"\['site_id'\] have no query parameter"):
        streams.Stream(
            DeviceMetrics,
            DeviceMetricsQuery,
            DeviceMetricsRead,
            {
                "device_id": streams.any_of(DeviceMetrics.device_id),
                "source": streams.equals(DeviceMetrics.source),
                "site_id": streams.equals(DeviceMetrics.device_id),
            },
        )


def test_error_filters_accept_exactly_what_the_error_logger_stores() -> None:
    assert get_args(Category) == CATEGORIES
    assert get_args(Severity) == SEVERITIES
