"""``dataplane.workers``: serving processes per data-plane pod, by default one per core of the CPU limit."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.rendering import container, render
from tests.chart.test_workloads import parse


def workers(dataplane_values: dict[str, Any]) -> int:
    args = parse("dataplane", container(render({"dataplane": dataplane_values}).workload("dataplane"))["args"])
    return int(args.workers)


def test_the_default_uses_every_core_of_the_default_cpu_limit() -> None:
    assert workers({}) == 2  # the chart's default limits.cpu is "2"


@pytest.mark.parametrize(("cpu", "expected"), [("4", 4), ("1500m", 1), ("2000m", 2), ("500m", 1), ("0.5", 1),
                                               ("3.9", 3), (16, 16)])
def test_the_cpu_limit_rounded_down_and_at_least_one(cpu: object, expected: int) -> None:
    assert workers({"resources": {"limits": {"cpu": cpu}}}) == expected


def test_no_cpu_limit_means_one_worker() -> None:
    assert workers({"resources": {"limits": {"cpu": None}}}) == 1  # null removes the chart's default "2"
    assert workers({"resources": {"limits": None}}) == 1


def test_an_explicit_count_wins_over_the_limit() -> None:
    assert workers({"workers": 3, "resources": {"limits": {"cpu": "8"}}}) == 3


@pytest.mark.parametrize("bad", [-1, 257, "two"])
def test_the_schema_refuses_a_count_the_data_plane_would_refuse(bad: object) -> None:
    with pytest.raises(Exception, match="workers"):
        render({"dataplane": {"workers": bad}})
