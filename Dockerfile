# syntax=docker/dockerfile:1
# One image for both components: `portcullis controller` and `portcullis dataplane` (the chart passes the
# subcommand as the container's args). Build: docker build -t portcullis:0.1.0 .
ARG PYTHON_VERSION=3.11

# Build stage: install the project and its dependencies (wheels) into a self-contained virtual environment.
FROM python:${PYTHON_VERSION}-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# gcc compiles the C extensions (dataplane/http/_headparser.c, dataplane/http2/_session.c on libnghttp2's
# headers); they stay in this stage.
RUN apt-get update -qq \
 && apt-get install -y -qq --no-install-recommends gcc libc6-dev libnghttp2-dev >/dev/null \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/portcullis
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY controller ./controller
COPY dataplane ./dataplane
# libnghttp2's shared library goes into the venv's tree, so the runtime stage needs no package manager step.
RUN /opt/portcullis/bin/pip install --no-compile . \
 && mkdir -p /opt/portcullis/native \
 && cp -L "/usr/lib/$(gcc -dumpmachine)/libnghttp2.so.14" /opt/portcullis/native/ \
 && LD_LIBRARY_PATH=/opt/portcullis/native /opt/portcullis/bin/python -c "import dataplane.http._headparser, dataplane.http2._session" \
 && /opt/portcullis/bin/python -m compileall -q -j 0 /opt/portcullis

# Runtime stage: the same slim Python, the venv (with libnghttp2, which the HTTP/2 server session links to),
# no compiler, no pip cache, no source tree, no package manager step.
FROM python:${PYTHON_VERSION}-slim-bookworm
COPY --from=build /opt/portcullis /opt/portcullis
ENV PATH=/opt/portcullis/bin:$PATH \
    LD_LIBRARY_PATH=/opt/portcullis/native \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# A numeric non-root user, so Kubernetes can verify runAsNonRoot without a passwd lookup (the chart uses 65532).
USER 65532:65532
WORKDIR /tmp
# https, http, admin (push API, /readyz, /metrics) of the data plane; /healthz of the controller.
EXPOSE 8443 8080 9901 8081
ENTRYPOINT ["portcullis"]
CMD ["dataplane"]
