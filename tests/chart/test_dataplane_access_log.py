"""``dataplane.accessLog``: the data plane's ``--access-log`` (json by default; text; off)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.chart.rendering import container, render
from tests.chart.test_workloads import parse


def access_log(dataplane_values: dict[str, Any]) -> str:
    args = parse("dataplane", container(render({"dataplane": dataplane_values}).workload("dataplane"))["args"])
    return str(args.access_log)


def test_json_by_default_and_the_value_reaches_the_flag() -> None:
    assert access_log({}) == "json"
    assert access_log({"accessLog": "text"}) == "text"
    assert access_log({"accessLog": "off"}) == "off"


@pytest.mark.parametrize("bad", ["yaml", True, ""])
def test_the_schema_refuses_a_format_the_data_plane_would_refuse(bad: object) -> None:
    with pytest.raises(Exception, match="accessLog"):
        render({"dataplane": {"accessLog": bad}})
