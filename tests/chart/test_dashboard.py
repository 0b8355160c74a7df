"""The Grafana dashboard queries only series the data plane really exports, with labels those series carry."""

from __future__ import annotations

import json
import re

from prometheus_client import Counter, Gauge, Histogram

from dataplane.metrics import Metrics
from tests.chart.rendering import ROOT

DASHBOARD = json.loads((ROOT / "deploy" / "grafana" / "portcullis-dashboard.json").read_text())
# Labels Prometheus adds when it scrapes a pod (ServiceMonitor / kubernetes_sd), besides the metric's own.
TARGET_LABELS = {"namespace", "pod", "le", "instance", "job", "service", "container", "endpoint"}


def exported() -> dict[str, set[str]]:
    """Series name -> label names, from the real Metrics object (counters get _total, histograms _bucket...)."""
    series: dict[str, set[str]] = {}
    for value in vars(Metrics()).values():
        if isinstance(value, Counter | Gauge | Histogram):
            name, labels = value._name, set(value._labelnames)
            if isinstance(value, Counter):
                series[name + "_total"] = labels
            elif isinstance(value, Histogram):
                for suffix in ("_bucket", "_sum", "_count"):
                    series[name + suffix] = labels
            else:
                series[name] = labels
    return series


def expressions() -> list[str]:
    out = [t["expr"] for p in DASHBOARD["panels"] for t in p.get("targets") or []]
    out += [v["definition"] for v in DASHBOARD["templating"]["list"] if v["type"] == "query"]
    return out


def test_every_queried_series_and_label_exists() -> None:
    series = exported()
    assert len(series) > 10
    used: set[str] = set()
    for expr in expressions():
        names = re.findall(r"\b(portcullis_[a-z0-9_]+)", expr)
        assert names, expr
        for name in names:
            assert name in series, f"{name} is not exported by dataplane/metrics.py ({expr})"
            used.add(name)
        allowed = set().union(*(series[n] for n in names)) | TARGET_LABELS
        grouped = {label.strip() for group in re.findall(r"by \(([^)]*)\)", expr) for label in group.split(",")}
        matched = set(re.findall(r"([a-z_]+)=~?\"", expr))
        assert grouped | matched <= allowed, (expr, (grouped | matched) - allowed)
    families = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in series}
    covered = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert covered == families, f"metrics without a panel: {families - covered}"


def test_the_issue_panels_are_there() -> None:
    titles = " | ".join(p["title"].lower() for p in DASHBOARD["panels"])
    for word in ("handshake", "mode", "expiry", "failure", "5xx", "snapshot"):
        assert word in titles
    uids = {t["datasource"]["uid"] for p in DASHBOARD["panels"] for t in p.get("targets") or []}
    assert uids == {"${datasource}"}, "every panel follows the data-source variable"
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))
