# Two commands set everything up on a fresh machine (see README):
#   make demo   — venv, real Elasticsearch 1.7 servers, the main job on generated sample data
#   make test   — venv, real Elasticsearch 1.7 and 8 servers, the whole test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ES_PORT ?= 9200
ES8_PORT ?= 9280
FLINK_PORT ?= 8281
POOL_PORT ?= 50199
DEMO_PORTS ?= 9220 9221
DEMO := demo-out

.PHONY: venv server server-stop proxy demo test test-distributed lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e ".[dev]"
	touch $@

# The project's own modules byte-compiled, as a wheel install would (an editable install is
# compiled on first import, unless PYTHONDONTWRITEBYTECODE is set: then every run compiles them
# again, ~0.1 s a command). Only stale files are rewritten.
venv: $(VENV)/.installed
	$(PY) -m compileall -q cli.py core pipelines transforms >/dev/null

# Elasticsearch 1.7.6 (what Cloudify 3.x managers run) and Elasticsearch 8 (the second target),
# fetched from Maven Central once and started on loopback.
server:
	scripts/search-server start --server elasticsearch-1.7 --port $(ES_PORT)
	scripts/search-server start --server elasticsearch-8 --port $(ES8_PORT)

# nginx from Debian's packages, unpacked into the cache (never installed): the TLS-terminating
# proxy the TLS and auth tests start in front of the real server.
proxy:
	scripts/tls-proxy fetch >/dev/null

server-stop:
	scripts/search-server stop --port $(ES_PORT)
	scripts/search-server stop --port $(ES8_PORT)

TEST_ENV = CFYSNAP_ES_URL=$$(scripts/search-server url --port $(ES_PORT)) \
	CFYSNAP_ES8_URL=$$(scripts/search-server url --port $(ES8_PORT))

demo: venv
	bash scripts/demo $(DEMO_PORTS)

# The whole suite: lint, types, then every test — the Flink ones (`distributed`) included, on the
# embedded Flink cluster (the job server is fetched once by scripts/flink-job-server).
test: lint server proxy
	$(TEST_ENV) $(VENV)/bin/pytest -q -o addopts=-ra -m "not cluster"

# The Flink tests on a real session cluster (JobManager, TaskManager and Beam worker-pool
# processes, scripts/flink-cluster), started here and stopped after, whatever the result.
test-distributed: venv server
	scripts/flink-job-server fetch >/dev/null
	OPTS="$$(scripts/flink-cluster start --rest-port $(FLINK_PORT) --pool-port $(POOL_PORT) | tail -n 1)" && \
	trap 'scripts/flink-cluster stop --rest-port $(FLINK_PORT) >/dev/null' EXIT && \
	scripts/flink-cluster status --rest-port $(FLINK_PORT) && \
	$(TEST_ENV) CFYSNAP_FLINK_CLUSTER=$(FLINK_PORT) CFYSNAP_FLINK_OPTIONS="$$OPTS" \
		$(VENV)/bin/pytest -q -m distributed -o addopts=-ra

lint: venv
	$(VENV)/bin/ruff check cli.py core pipelines transforms tests bench
	$(VENV)/bin/mypy cli.py core pipelines transforms bench

# cfysnap against elasticdump, a plain loop and the server's raw rate (see bench/harness.py)
bench: venv
	bench/run --docs 100000

clean:
	rm -rf $(DEMO)
