"""Unit-test wiring: every test module that calls ``parse_request_head`` runs once against the C
request-head parser and once against the pure-Python reference (issue 12), so neither can drift.

The C run fails (never skips) when the extension was not built: ``make install`` builds it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dataplane.http import parser

_IMPLEMENTATIONS = ("c", "python")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    fn = getattr(metafunc.module, "parse_request_head", None)
    if fn is None or fn not in (parser.parse_request_head, parser.parse_request_head_py):
        return
    metafunc.fixturenames.append("head_parser_impl")
    metafunc.parametrize("head_parser_impl", _IMPLEMENTATIONS, indirect=True, scope="module")


@pytest.fixture(scope="module")
def head_parser_impl(request: pytest.FixtureRequest) -> Iterator[str]:
    """Module-scoped (hypothesis refuses function-scoped fixtures): swaps the module's global."""
    if request.param == "c":
        if parser.PARSER_IMPLEMENTATION != "c":
            pytest.fail("the C request-head parser (dataplane/http/_headparser.c) is not built; run `make install`")
        impl = parser.parse_request_head
    else:
        impl = parser.parse_request_head_py
    module = request.module
    saved = module.parse_request_head
    module.parse_request_head = impl
    try:
        yield request.param
    finally:
        module.parse_request_head = saved
