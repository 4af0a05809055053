# syntax=docker/dockerfile:1
# scalekit-bridge: Scalekit webhooks → CloudEvents on Kafka.
#   docker build -t scalekit-bridge .
# Runs as a numeric non-root user, writes nothing to its filesystem (read-only root is fine),
# and needs SCALEKIT_WEBHOOK_SECRET and KAFKA_BOOTSTRAP_SERVERS (see README, Configuration).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VENV=/opt/scalekit-bridge
WORKDIR /src
# Dependencies first, in their own layer: it is rebuilt only when the pins change, not the code.
COPY pyproject.toml constraints.txt ./
RUN python -m venv "$VENV" \
 && python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' > requirements.txt \
 && "$VENV/bin/pip" install --quiet -c constraints.txt -r requirements.txt
# Then the code (bridge/schemas links to schemas/, resolved into the wheel).
COPY README.md ./
COPY schemas/ schemas/
COPY bridge/ bridge/
RUN "$VENV/bin/pip" install --quiet --no-deps . \
 && "$VENV/bin/python" -m compileall -q "$VENV" \
 && "$VENV/bin/scalekit-bridge" --version

FROM ${PYTHON_IMAGE}
ARG VERSION=0.1.0
# Where the source lives for this build, e.g. --build-arg SOURCE_URL=https://<your forge>/scalekit-bridge
ARG SOURCE_URL=""
LABEL org.opencontainers.image.title="scalekit-bridge" \
      org.opencontainers.image.description="Turns signed Scalekit webhooks into CloudEvents on Kafka, answering 201 only after the broker acknowledged the record." \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="${SOURCE_URL}"
ENV PATH=/opt/scalekit-bridge/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/scalekit-bridge /opt/scalekit-bridge
# Numeric, so Kubernetes' runAsNonRoot can verify it without a passwd lookup.
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["scalekit-bridge", "serve"]
