# SpineNode: `make run` sets up and starts the node on its defaults; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-stamp
HTTP_PORT ?= 8080
DEBIAN_TOOLS := dcmtk dicom3tools

.PHONY: setup run test lint debian-tools clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

run: setup
	$(VENV)/bin/spinenode serve --http-port $(HTTP_PORT)

# dcmtk and dciodvfy (every test), Orthanc with its DICOMweb plugin (tests/dicom_node/viewers/test_orthanc.py),
# Node.js and npm (tests/dicom_node/viewers/test_viewers.py runs OHIF's readers; npm ci installs them),
# Chromium (tests/dicom_node/http/test_http_browser.py drives the web page with playwright-core; no download),
# PostgreSQL's server binaries (tests/dicom_node/roles/test_postgres.py starts a throwaway cluster: initdb, pg_ctl),
# PixelMed's validators (pixelmed-apps with java: tests/pixelmed.py, a second validator beside dciodvfy).
debian-tools:
	@missing=""; \
	command -v storescu >/dev/null || missing="$$missing dcmtk"; \
	command -v dciodvfy >/dev/null || missing="$$missing dicom3tools"; \
	command -v Orthanc >/dev/null || test -x /usr/sbin/Orthanc || missing="$$missing orthanc"; \
	test -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so || missing="$$missing orthanc-dicomweb"; \
	command -v node >/dev/null || missing="$$missing nodejs"; \
	command -v npm >/dev/null || missing="$$missing npm"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	test -f /usr/share/java/pixelmed.jar || missing="$$missing pixelmed-apps"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

test: setup debian-tools
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

clean:
	rm -rf $(VENV) var .pytest_cache
