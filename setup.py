"""Build the optional C request-head parser; everything else is configured in pyproject.toml.

``optional=True``: without a compiler or Python headers the package still installs and
``dataplane.http.parser`` uses its pure-Python parser (``portcullis dataplane`` logs which one runs).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "dataplane.http._headparser",
            sources=["dataplane/http/_headparser.c"],
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-missing-field-initializers"],
            optional=True,
        )
    ]
)
