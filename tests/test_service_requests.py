"""The pieces of `simulate outage --service` that need no service: requests and percentiles."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cbctl.errors import UsageError
from cbctl.service import parse_request, percentile


def test_a_request_is_method_url_and_an_optional_json_body() -> None:
    assert parse_request("post http://127.0.0.1:8000/learning/process") == (
        "POST",
        "http://127.0.0.1:8000/learning/process",
        b"",
        {},
    )
    method, url, body, headers = parse_request(
        'POST http://h/x {"text": "a b"}', ("Authorization: Bearer t",)
    )
    assert (method, url, body) == ("POST", "http://h/x", b'{"text": "a b"}')
    assert headers == {"Authorization": "Bearer t", "Content-Type": "application/json"}


@pytest.mark.parametrize(
    ("request_text", "headers"),
    [
        ("http://h/x", ()),
        ("GET ftp://h/x", ()),
        ("GET", ()),
        ("GET http:///x", ()),
        ("GET http://h/x", ("no colon",)),
    ],
)
def test_a_malformed_request_or_header_is_a_usage_error(
    request_text: str, headers: tuple[str, ...]
) -> None:
    with pytest.raises(UsageError):
        parse_request(request_text, headers)


@given(st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=200))
def test_percentiles_are_values_of_the_sample_in_order(values: list[float]) -> None:
    p50, p99 = percentile(values, 0.5), percentile(values, 0.99)
    assert p50 in values
    assert p99 in values
    assert min(values) <= p50 <= p99 <= max(values)
    assert percentile(values, 1.0) == max(values)


def test_the_percentile_of_nothing_is_nan() -> None:
    assert math.isnan(percentile([], 0.5))
