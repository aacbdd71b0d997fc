# mawex: one image for masters, workers, clients and sandbox executors.
#
#   docker build -t mawex .
#   docker run --rm -p 7070:7070 mawex                      # a master on SQLite in /var/lib/mawex
#   docker run --rm mawex worker mawex.examples.demo:Demo --master http://HOST:7070 --group etl --pod p1
#
# Slim and non-root: dependencies are built in a throw-away stage, the runtime stage
# holds only the virtualenv and runs as uid 10001. Your own executors: build FROM this
# image and `pip install` your package into /opt/mawex (see docs/operations.md).

ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/mawex
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/mawex/bin/pip install ".[postgres,redis,k8s]"

FROM python:${PYTHON_VERSION}-slim
LABEL org.opencontainers.image.title="mawex" \
      org.opencontainers.image.description="Distributed task scheduling: event-sourced HA master, workers in groups and pods, sandboxes" \
      org.opencontainers.image.licenses="MIT"
RUN groupadd --system --gid 10001 mawex \
    && useradd --system --uid 10001 --gid mawex --home-dir /var/lib/mawex --create-home \
       --shell /usr/sbin/nologin mawex
COPY --from=build /opt/mawex /opt/mawex
ENV PATH=/opt/mawex/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MAWEX_LOG_FORMAT=json
USER 10001:10001
WORKDIR /var/lib/mawex
VOLUME ["/var/lib/mawex"]
EXPOSE 7070
STOPSIGNAL SIGTERM
ENTRYPOINT ["mawex"]
CMD ["master", "--journal", "sqlite:////var/lib/mawex/mawex.db", "--listen", "0.0.0.0:7070"]
