"""``dataplane.limits``: the data plane's --max-connections, --max-connections-per-ip, --max-handshakes-per-second."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.rendering import container, render
from tests.chart.test_workloads import parse


def args(dataplane_values: dict[str, Any]) -> Any:
    return parse("dataplane", container(render({"dataplane": dataplane_values}).workload("dataplane"))["args"])


def test_defaults_derive_the_cap_and_leave_the_others_off() -> None:
    parsed = args({})
    assert (parsed.max_connections, parsed.max_connections_per_ip, parsed.max_handshakes_per_second) == (-1, 0, 0)


def test_values_reach_the_flags() -> None:
    parsed = args({"limits": {"maxConnections": 5000, "maxConnectionsPerIP": 50, "maxHandshakesPerSecond": 800}})
    assert (parsed.max_connections, parsed.max_connections_per_ip, parsed.max_handshakes_per_second) == (
        5000, 50, 800.0)


@pytest.mark.parametrize("bad", [{"maxConnections": -2}, {"maxConnectionsPerIP": "ten"},
                                 {"maxHandshakesPerSecond": -1}, {"maxConnection": 5}])
def test_the_schema_refuses_what_the_data_plane_would_refuse(bad: dict[str, Any]) -> None:
    with pytest.raises(Exception, match=r"limits|maxConn|maxHand"):
        render({"dataplane": {"limits": bad}})
