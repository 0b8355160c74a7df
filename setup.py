"""Build the C extensions; everything else is configured in pyproject.toml.

``optional=True``: without a compiler or Python headers the package still installs and
``dataplane.http.parser`` uses its pure-Python parser (``portcullis dataplane`` logs which one runs).
The HTTP/2 server session (``dataplane/http2/_session.c``) needs libnghttp2's headers too
(``scripts/install-build-deps``); without it the data plane offers clients http/1.1 only and logs why.
Either missing fails ``make test`` on purpose (tests/unit/conftest.py, tests/unit/test_h2_session.py).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dataplane.http._headparser",
            sources=["dataplane/http/_headparser.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "dataplane.http2._session",
            sources=["dataplane/http2/_session.c"],
            libraries=["nghttp2"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror"],
            optional=True,
        ),
    ]
)
