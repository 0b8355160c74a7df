"""``dataplane.http2``: the data plane's ``--http2`` and ``--h2-max-*`` flood limits, rendered by the real Helm
engine and read back by the data plane's own argument parser and config check."""

from __future__ import annotations

from typing import Any

import pytest

from dataplane.http2.guard import H2Limits
from dataplane.server import H2_FLAGS, config_from_args
from tests.chart.rendering import container, render
from tests.chart.test_workloads import parse

VALUES = {  # chart value -> the H2Limits field its flag sets
    "maxConcurrentStreams": "max_concurrent_streams", "maxResetsPerSecond": "max_resets_per_second",
    "maxContinuationFrames": "max_continuation_frames", "maxSettingsPerSecond": "max_settings_per_second",
    "maxPingsPerSecond": "max_pings_per_second", "maxEmptyFramesPerSecond": "max_empty_frames_per_second",
    "maxWindowUpdatesPerSecond": "max_window_updates_per_second", "maxPriorityPerSecond": "max_priority_per_second",
}


def rendered(http2: dict[str, Any]) -> tuple[list[str], Any]:
    args = container(render({"dataplane": {"http2": http2}}).workload("dataplane"))["args"]
    parsed = parse("dataplane", args)
    parsed.admin_token_file = None  # the pod's mounted token: not here, and not what this test is about
    return args, parsed


def test_every_flag_is_rendered_and_the_defaults_are_the_data_planes() -> None:
    args, parsed = rendered({})
    for flag, _, _ in H2_FLAGS:  # each flag explicitly, so a new --h2-* flag needs a chart value too
        assert any(a.startswith(f"--{flag}=") for a in args), f"--{flag} not rendered"
    assert "--http2=true" in args
    config = config_from_args(parsed)
    assert config.http2 and config.h2_limits() == H2Limits()


def test_values_reach_the_flags() -> None:
    values = {name: 1_000_000 + i for i, name in enumerate(VALUES)}  # large: rendered as integers, not 1e+06
    args, parsed = rendered({"enabled": False, **values})
    limits = config_from_args(parsed).h2_limits()
    assert {name: getattr(limits, field) for name, field in VALUES.items()} == values, args
    assert not config_from_args(parsed).http2


@pytest.mark.parametrize("bad", [{"maxResetsPerSecond": 0}, {"maxPingsPerSecond": "ten"},
                                 {"maxPriorityPerSecond": 1.5}, {"enabled": "yes"}, {"maxStreams": 5}])
def test_the_schema_refuses_what_the_data_plane_would_refuse(bad: dict[str, Any]) -> None:
    with pytest.raises(Exception, match=r"http2|max|enabled"):
        render({"dataplane": {"http2": bad}})
