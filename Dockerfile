# SpineNode: DICOM node + shipped demo models on CPU. By default `spinenode serve` with the SQLite audit
# database in /data; the same image runs the scale-out roles (docker-compose.yml): `serve --workers 0`
# (receiver) and `worker`, with SPINENODE_DB_URL naming PostgreSQL.
FROM python:3.11-slim-bookworm

# CPU-only PyTorch wheels (the default index serves the much larger CUDA build)
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends make libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt pyproject.toml README.md Makefile ./
COPY dicom_node ./dicom_node
COPY inference ./inference
COPY models ./models
COPY config ./config
RUN python -m venv .venv \
    && .venv/bin/pip install --no-cache-dir --extra-index-url "$TORCH_INDEX_URL" -r requirements.txt \
    && .venv/bin/pip install --no-cache-dir --no-deps -e . \
    && useradd --system --uid 10001 --home-dir /data --no-create-home spinenode \
    && mkdir -p /data \
    && chown 10001 /data

ENV TCP_NODELAY=1 SPINENODE_CACHE_DIR=/data/cache
USER 10001
EXPOSE 11112
VOLUME ["/data"]
ENTRYPOINT [".venv/bin/spinenode"]
CMD ["serve", "--data-dir", "/data"]
