"""h2spec (github.com/summerwind/h2spec) against an offload host: every generic and HTTP/2 case must pass.

h2spec is a real HTTP/2 client built to break servers (bad frames, bad states, flow-control edge cases);
it runs as a subprocess over TLS (ALPN h2) against a full in-process data plane while the event loop
keeps serving. Its JUnit report names every case; a failure not listed in ``EXPECTED_FAILURES`` fails the
test, and so does a missing binary (``make system-deps`` builds it): a conformance test must not skip.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

from dataplane.snapshot import Endpoint, Pool, Route, Snapshot, VirtualHost
from tests.integration.conftest import certificate, running_dataplane, terminate_host
from tests.integration.http_fixtures import start_echo
from tests.pki import CA

# h2spec case id (section/number, as in its report) -> why this server is allowed to fail it. Aim: empty.
EXPECTED_FAILURES: dict[str, str] = {}


def h2spec_binary() -> str:
    found = shutil.which("h2spec")
    if found:
        return found
    for candidate in (Path.home() / ".cache/portcullis/bin/h2spec", Path("/tmp/gobin/h2spec")):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise AssertionError("h2spec not found (PATH, ~/.cache/portcullis/bin, /tmp/gobin): run `make system-deps`")


def h2spec_snapshot(ca: CA, backend_port: int) -> Snapshot:
    cert = certificate(ca.issue("h2spec.test", "127.0.0.1"), "h2spec.test")
    pool = Pool("demo/web:80", (Endpoint("127.0.0.1", backend_port),))
    return Snapshot(
        generation=1,
        certificates=(cert,),
        default_certificate_id=cert.id,  # h2spec connects to an IP address: no SNI, the default certificate
        pools=(pool,),
        tls_hosts=(terminate_host("h2spec.test", cert),),
        virtual_hosts=(VirtualHost("127.0.0.1", (Route("/", "Prefix", pool.id),)),),
    ).canonical()


def failures(report: Path) -> dict[str, str]:
    """Failed (or errored) cases of h2spec's JUnit report: case id as h2spec names it (``http2/5.1.2/1``,
    the suite's package and the case's position in it) -> the case's title and h2spec's message."""
    out: dict[str, str] = {}
    root = ET.parse(report).getroot()
    for suite in root.iter("testsuite"):
        package = suite.get("package") or suite.get("name") or "?"
        for number, case in enumerate(suite.iter("testcase"), 1):
            bad = case.find("failure")
            if bad is None:
                bad = case.find("error")
            if bad is not None:
                message = (bad.get("message") or "") + " " + (bad.text or "")
                out[f"{package}/{number}"] = f"{case.get('classname')}: {message.strip()[:300]}"
    return out


def test_report_parser_finds_failures(tmp_path: Path) -> None:
    """The gate below can fail: a report with a failed and an errored case names both, by h2spec's id."""
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite package="http2/5.1.2" name="5.1.2">'
        '<testcase package="http2/5.1.2" classname="ok case"></testcase>'
        '<testcase package="http2/5.1.2" classname="bad case"><failure message="expected RST_STREAM">'
        "got GOAWAY</failure></testcase></testsuite>"
        '<testsuite package="generic/1"><testcase classname="x"><error>timeout</error></testcase></testsuite>'
        "</testsuites>"
    )
    assert failures(report) == {"http2/5.1.2/2": "bad case: expected RST_STREAM got GOAWAY",
                                "generic/1/1": "x: timeout"}


async def test_h2spec_generic_and_http2(ca: CA, tmp_path: Path) -> None:
    binary = h2spec_binary()
    backend = await start_echo()
    report = tmp_path / "h2spec.xml"
    try:
        async with running_dataplane(drain_timeout=0.5) as dp:
            assert not dp.apply(h2spec_snapshot(ca, backend.port))
            proc = await asyncio.create_subprocess_exec(
                binary, "generic", "http2", "-h", "127.0.0.1", "-p", str(dp.https_port), "-t", "-k", "-o", "20",
                "--junit-report", str(report),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), 600)
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    finally:
        backend.close()
    text = out.decode("utf-8", "replace")
    assert report.exists(), text[-3000:]
    cases = sum(1 for _ in ET.parse(report).getroot().iter("testcase"))
    failed = failures(report)
    print(f"h2spec: {cases} cases, {len(failed)} failed, {len(EXPECTED_FAILURES)} expected failures")
    assert cases > 100, text[-3000:]  # the generic and http2 sections ran, not an early connection failure
    unexpected = {k: v for k, v in failed.items() if k not in EXPECTED_FAILURES}
    assert not unexpected, "\n".join(f"{k}: {v}" for k, v in unexpected.items()) + "\n" + text[-2000:]
