"""``portcullis render`` of gRPC Ingresses next to the examples: the snapshot a data plane would get says h2.

The real command in a subprocess, on the real ``deploy/examples`` plus a file of gRPC Ingresses, so the CLI,
manifest loading, the renderer and the snapshot's JSON form are all in the path the data plane's h2 code reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _ingress(name: str, host: str, service: str, port: int, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": name, "namespace": "demo", "annotations": annotations},
        "spec": {"ingressClassName": "portcullis", "tls": [{"hosts": [host]}], "rules": [{"host": host, "http": {
            "paths": [{"path": "/", "pathType": "Prefix",
                       "backend": {"service": {"name": service, "port": {"number": port}}}}]}}]},
    }


def test_render_prints_h2_pools_and_http2_rows(tmp_path: Path) -> None:
    grpc = tmp_path / "grpc.yaml"
    grpc.write_text(yaml.safe_dump_all([
        _ingress("grpc", "grpc.portcullis.test", "web", 80, {"portcullis.io/backend-protocol": "grpc"}),
        _ingress("grpcs", "grpcs.portcullis.test", "secure-web", 443, {
            "portcullis.io/backend-protocol": "grpcs", "portcullis.io/backend-ca-secret": "example-ca"}),
        _ingress("nginx-grpc", "nginx-grpc.portcullis.test", "web", 80, {
            "nginx.ingress.kubernetes.io/backend-protocol": "GRPC", "portcullis.io/http2": "false"}),
    ]))
    done = subprocess.run([sys.executable, "-m", "controller.cli", "render", "-f", str(ROOT / "deploy/examples"),
                           "-f", str(grpc)], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", "no problem: no Warning, no Error"
    snapshot = json.loads(done.stdout)
    pools = {p["id"]: p for p in snapshot["pools"]}
    routes = {v["host"]: pools[v["routes"][0]["pool_id"]] for v in snapshot["virtual_hosts"] if v["routes"]}
    rows = {h["host"]: h for h in snapshot["tls_hosts"]}

    assert routes["grpc.portcullis.test"]["protocol"] == "h2" and routes["grpc.portcullis.test"]["tls"] is None
    assert routes["nginx-grpc.portcullis.test"] == routes["grpc.portcullis.test"], "same Service and protocol: one pool"
    secure = routes["grpcs.portcullis.test"]
    assert secure["protocol"] == "h2" and secure["tls"]["verify"] is True and secure["tls"]["ca_id"]
    assert secure["tls"]["server_name"] == "secure-web.demo.svc"
    # the examples' own pools stay HTTP/1.1 and keep their ids, distinct from the h2 pools on the same ports
    edge = routes["edge.portcullis.test"]
    assert edge["protocol"] == "http1" and edge["id"] == "demo/web:80"
    assert routes["grpc.portcullis.test"]["id"] != "demo/web:80"
    assert routes["bridge.portcullis.test"]["protocol"] == "http1"
    assert routes["bridge.portcullis.test"]["id"] != secure["id"]

    assert rows["grpc.portcullis.test"]["http2"] is True and rows["edge.portcullis.test"]["http2"] is True
    assert rows["nginx-grpc.portcullis.test"]["http2"] is False
