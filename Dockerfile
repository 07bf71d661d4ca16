# SpineNode: DICOM node + shipped demo models, SQLite audit log in /data.
FROM python:3.11-slim-bookworm

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
    && .venv/bin/pip install --no-cache-dir -r requirements.txt \
    && .venv/bin/pip install --no-cache-dir --no-deps -e .

ENV TCP_NODELAY=1
EXPOSE 11112
VOLUME ["/data"]
ENTRYPOINT [".venv/bin/spinenode"]
CMD ["serve", "--data-dir", "/data"]
