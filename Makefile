# geodispatch: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
GD := $(VENV)/bin/geodispatch
STAMP := $(VENV)/.installed
# The Node clients the gateway's tests drive (tests/clients: socket.io-client, eventsource, puppeteer-core).
NODE_STAMP := tests/clients/node_modules/.installed
PYTHON ?= python3
PYTEST_ARGS ?=

# The local servers' ports: `KAFKA_PORT=19092 REDIS_PORT=16379 make test` runs beside another broker.
# KAFKA_BOOTSTRAP_SERVERS / REDIS_URL, when set, point at existing servers and nothing local starts.
KAFKA_PORT ?= 9092
KAFKA_CONTROLLER_PORT ?= $(shell expr $(KAFKA_PORT) + 1)
REDIS_PORT ?= 6379
ifeq ($(origin KAFKA_BOOTSTRAP_SERVERS),undefined)
START_KAFKA := 1
KAFKA_BOOTSTRAP_SERVERS := 127.0.0.1:$(KAFKA_PORT)
endif
ifeq ($(origin REDIS_URL),undefined)
START_REDIS := 1
REDIS_URL := redis://127.0.0.1:$(REDIS_PORT)/0
endif
export KAFKA_PORT KAFKA_CONTROLLER_PORT REDIS_PORT KAFKA_BOOTSTRAP_SERVERS REDIS_URL

.PHONY: help setup infra-up infra-down cluster-up cluster-down test-cluster topics run test test-unit upgrade-test lint demo demo-stop dashboard compare bench faults clean

help: ## list every target with one line each
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[worker,gateway,dev,plots,bench]'
	@touch $@

setup: $(STAMP) ## create .venv and install the project with its dev tools

$(NODE_STAMP): tests/clients/package-lock.json
	npm ci --no-audit --no-fund --prefix tests/clients
	@touch $@

# The clock-step fault scenario preloads it (tests/faults/clock.py names the same path).
LIBFAKETIME := /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1

# The fault suite's link proxy (tests/faults/links.py), built from source by infra/toxiproxy.sh; a new
# pinned version in the script builds it again.
TOXIPROXY := $(or $(GEODISPATCH_CACHE),.cache)/bin/toxiproxy-server
$(TOXIPROXY): infra/toxiproxy.sh
	@infra/toxiproxy.sh ensure
	@touch $@

infra-up: setup ## start Kafka (KRaft) and Redis on 127.0.0.1, unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL point elsewhere
	@if [ -n "$(START_KAFKA)" ]; then infra/kafka/kafka.sh up; else echo "kafka: using $$KAFKA_BOOTSTRAP_SERVERS (KAFKA_BOOTSTRAP_SERVERS is set)"; fi
	@if [ -n "$(START_REDIS)" ]; then infra/redis.sh up; else echo "redis: using REDIS_URL from the environment"; fi

infra-down: ## stop the Kafka and Redis that infra-up started
	@infra/kafka/kafka.sh down
	@infra/redis.sh down

# The distributed servers (docs/SCALING.md): `eval "$$(infra/cluster.sh env)"` points a shell at them.
cluster-up: setup ## start a three-broker Kafka cluster (9192, 9194, 9196) and a Redis Cluster of 3 primaries + 3 replicas (7000-7005)
	@infra/cluster.sh up

cluster-down: ## stop what cluster-up started
	@infra/cluster.sh down

test-cluster: cluster-up ## the integration tests marked `cluster` (sessions, assignment, DLQ, restarts, the index) on those servers
	eval "$$(infra/cluster.sh env)" && GEODISPATCH_REQUIRE_INFRA=1 $(PY) -m pytest -m cluster tests/integration $(PYTEST_ARGS)

# Servers of someone else's (KAFKA_BOOTSTRAP_SERVERS given): missing topics are created, existing
# ones left as they are; `geodispatch topics apply --help` says what a full apply changes.
TOPICS_APPLY_ARGS ?= $(if $(START_KAFKA),,--create-only)

topics: infra-up ## create the plan's missing topics (on our own broker, also set the configs the pipeline needs)
	$(GD) topics apply $(TOPICS_APPLY_ARGS)

# RUN_SHAPE=one runs every role in one process instead (docs/DEPLOYMENT.md).
RUN_SHAPE ?= roles

run: topics ## start the deployment recommended for one machine: a process per role (sessions API on :6066)
	$(GD) run --shape $(RUN_SHAPE)

test-unit: setup ## unit tests only: no broker, no Redis
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test: topics lint $(NODE_STAMP) $(TOXIPROXY) ## set up, start Kafka and Redis, lint, run every test (the browser's too)
	@infra/debian-package.sh ensure chromium /usr/bin/chromium
	@infra/debian-package.sh ensure faketime $(LIBFAKETIME)
	GEODISPATCH_REQUIRE_INFRA=1 $(PY) -m pytest $(PYTEST_ARGS)

upgrade-test: topics ## the last release's worker (CHANGELOG.md) on real data, replaced by this one: nothing lost (also in make test)
	GEODISPATCH_REQUIRE_INFRA=1 $(PY) -m pytest tests/upgrade $(PYTEST_ARGS)

faults: topics $(TOXIPROXY) ## the long fault-injection runs (worker kill, zombie, partial faults, ...) with their figures: within 45 minutes on 2 cores
	@infra/debian-package.sh ensure faketime $(LIBFAKETIME)
	GEODISPATCH_REQUIRE_INFRA=1 GEODISPATCH_FAULTS_FULL=1 $(PY) -m pytest tests/faults -s $(PYTEST_ARGS)

# `make bench`: 11-14 minutes on 2 cores; BENCH_ARGS=--quick tries the suite in about 3.
BENCH_ARGS ?=

bench: infra-up ## the benchmark suite on its own topics and Redis keys: JSON + PNG in bench/results, one table
	$(PY) -m bench $(BENCH_ARGS)

lint: setup ## ruff
	$(VENV)/bin/ruff check .

clean: infra-down ## stop everything and remove caches (keeps the downloaded broker jars)
	rm -rf .cache/kafka/run .cache/redis .cache/worker .cache/upgrade .pytest_cache
	git worktree prune

# `make demo`: a worker in the background and a simulated city against it. Override any of these,
# e.g. `make demo DEMO_SECONDS=120 DEMO_CITY=lagos`.
DEMO_SECONDS ?= 60
DEMO_CITY ?= new-york
DEMO_DRIVERS ?= 150
DEMO_ORDERS_PER_S ?= 1.5
# Trips progress this many times faster than the drivers' (plausible) reported speeds, so that
# deliveries happen within a one-minute demo.
DEMO_SPEEDUP ?= 20
DEMO_MALFORMED ?= 0.01
DEMO_SEED ?= 1
DEMO_PORT ?= 6066
DEMO_DIR ?= results/demo
DEMO_PID := $(DEMO_DIR)/worker.pid
DEMO_GATEWAY_PORT ?= 6070
DEMO_GATEWAY_PID := $(DEMO_DIR)/gateway.pid
# The demo gateway's token secret: made once, kept in the demo's folder (never in the workers' environment,
# so that the sessions API stays open as `make run` leaves it).
DEMO_SECRET := $(DEMO_DIR)/jwt.secret
# The stream processes of `make run`'s shape serve /stats on the ports after the sessions API's.
DEMO_STATS := --stats-url http://127.0.0.1:$(shell expr $(DEMO_PORT) + 1)/stats \
  --stats-url http://127.0.0.1:$(shell expr $(DEMO_PORT) + 2)/stats

demo: topics ## the deployment of `make run` + a simulated city for DEMO_SECONDS (60): live view, summary, pictures in results/demo
	@mkdir -p $(DEMO_DIR)
	@if [ -f $(DEMO_PID) ] && kill -0 "$$(cat $(DEMO_PID))" 2>/dev/null; then \
	  echo "demo: reusing the workers started earlier (pid $$(cat $(DEMO_PID)))"; \
	elif ! $(PY) -c "import socket, sys; sys.exit(any(socket.socket().connect_ex(('127.0.0.1', $(DEMO_PORT) + n)) == 0 for n in range(3)))"; then \
	  echo "demo: port $(DEMO_PORT), $$(($(DEMO_PORT) + 1)) or $$(($(DEMO_PORT) + 2)) is taken by another process; choose with DEMO_PORT=..."; exit 1; \
	else \
	  GEODISPATCH_LOG_FORMAT=json nohup $(GD) run --web-port $(DEMO_PORT) > $(DEMO_DIR)/worker.log 2>&1 & \
	  echo $$! > $(DEMO_PID); \
	  echo "demo: a worker per role started in the background (pid $$(cat $(DEMO_PID)), log $(DEMO_DIR)/worker.log)"; \
	fi
	@if [ -f $(DEMO_GATEWAY_PID) ] && kill -0 "$$(cat $(DEMO_GATEWAY_PID))" 2>/dev/null; then \
	  echo "demo: reusing the gateway started earlier (pid $$(cat $(DEMO_GATEWAY_PID)))"; \
	else \
	  test -s $(DEMO_SECRET) || $(PY) -c "import secrets; print(secrets.token_urlsafe(32))" > $(DEMO_SECRET); \
	  GEODISPATCH_JWT_SECRET="$$(cat $(DEMO_SECRET))" GEODISPATCH_LOG_FORMAT=json nohup $(GD) gateway --port $(DEMO_GATEWAY_PORT) \
	    > $(DEMO_DIR)/gateway.log 2>&1 & echo $$! > $(DEMO_GATEWAY_PID); \
	  echo "demo: the real-time gateway started in the background (pid $$(cat $(DEMO_GATEWAY_PID)), log $(DEMO_DIR)/gateway.log)"; \
	fi
	@token=$$(GEODISPATCH_JWT_SECRET="$$(cat $(DEMO_SECRET))" $(GD) gateway token --sub demo-operator --role support --ttl-s 86400); \
	  url="http://127.0.0.1:$(DEMO_GATEWAY_PORT)/map/#token=$$token"; echo "$$url" > $(DEMO_DIR)/live_map.url; \
	  echo "demo: the live map: $$url"; \
	  if [ -n "$$DISPLAY$$WAYLAND_DISPLAY" ] && command -v xdg-open >/dev/null; then xdg-open "$$url" >/dev/null 2>&1 || true; fi
	@$(GD) simulate --city $(DEMO_CITY) --drivers $(DEMO_DRIVERS) --orders-per-s $(DEMO_ORDERS_PER_S) \
	  --duration $(DEMO_SECONDS) --speedup $(DEMO_SPEEDUP) --malformed-fraction $(DEMO_MALFORMED) --seed $(DEMO_SEED) \
	  $(DEMO_STATS) --api-url http://127.0.0.1:$(DEMO_PORT) --wait-ready 120 --live --results $(DEMO_DIR) --pictures \
	  || { echo "demo: failed; the worker's last lines:"; tail -n 20 $(DEMO_DIR)/worker.log; exit 1; }
	@echo ""
	@echo "demo: pictures and the run's records are in $(DEMO_DIR)/ (map.png, latency.png, summary.txt)"
	@echo "demo: the live map stays up with the gateway (its address is in $(DEMO_DIR)/live_map.url); another 'make demo' plays on it"
	@echo "demo: the workers and the gateway keep running (pids $$(cat $(DEMO_PID)), $$(cat $(DEMO_GATEWAY_PID))): inspect dead letters with"
	@echo "        $(GD) dlq list"
	@echo "      stop it with 'make demo-stop'; 'make demo' starts it again"

# `make compare`: greedy and batch matching on the same seeded city, for each scenario, each policy
# against a worker of its own; tables and pictures in COMPARE_DIR/<scenario> (docs/MATCHING.md).
COMPARE_ARGS ?= --drivers 300 --orders-per-s 3 --duration 90 --speedup 10 --seed 7
COMPARE_DIR ?= results/compare

compare: topics ## greedy vs batch matching on the simulator's three scenarios (about 15 min): tables and pictures in results/compare
	@for scenario in balanced shortage rush; do \
	  $(GD) simulate --compare greedy,batch --scenario $$scenario $(COMPARE_ARGS) \
	    --results $(COMPARE_DIR)/$$scenario --pictures || exit 1; \
	done

demo-stop: ## stop the workers and the gateway `make demo` left running
	@if [ -f $(DEMO_PID) ] && kill -0 "$$(cat $(DEMO_PID))" 2>/dev/null; then \
	  pid=$$(cat $(DEMO_PID)); kill $$pid; while kill -0 $$pid 2>/dev/null; do sleep 0.2; done; \
	  echo "demo: workers of $$pid stopped"; \
	else echo "demo: no worker running"; fi
	@if [ -f $(DEMO_GATEWAY_PID) ] && kill -0 "$$(cat $(DEMO_GATEWAY_PID))" 2>/dev/null; then \
	  pid=$$(cat $(DEMO_GATEWAY_PID)); kill $$pid; while kill -0 $$pid 2>/dev/null; do sleep 0.2; done; \
	  echo "demo: gateway $$pid stopped"; \
	else echo "demo: no gateway running"; fi
	@rm -f $(DEMO_PID)

# `make dashboard`: `make demo` with its four processes' /metrics sampled every two seconds, then the
# Grafana dashboard (deploy/observability/dashboard.json) plotted from the samples (docs/OBSERVABILITY.md).
DEMO_METRICS := $(DEMO_DIR)/metrics.jsonl
DEMO_TARGETS := --target api:$(DEMO_PORT)=geodispatch-worker,http://127.0.0.1:$(DEMO_PORT)/metrics \
  --target sessions:$(shell expr $(DEMO_PORT) + 1)=geodispatch-worker,http://127.0.0.1:$(shell expr $(DEMO_PORT) + 1)/metrics \
  --target assignments:$(shell expr $(DEMO_PORT) + 2)=geodispatch-worker,http://127.0.0.1:$(shell expr $(DEMO_PORT) + 2)/metrics \
  --target gateway:$(DEMO_GATEWAY_PORT)=geodispatch-gateway,http://127.0.0.1:$(DEMO_GATEWAY_PORT)/metrics

dashboard: ## `make demo` with its /metrics sampled: the dashboard's panels in docs/observability/dashboard.png
	@mkdir -p $(DEMO_DIR); rm -f $(DEMO_METRICS)
	@$(PY) deploy/observability/render_dashboard.py sample --out $(DEMO_METRICS) --seconds 1800 $(DEMO_TARGETS) & \
	  sampler=$$!; $(MAKE) --no-print-directory demo; status=$$?; kill $$sampler; wait $$sampler; \
	  [ $$status -eq 0 ] && $(PY) deploy/observability/render_dashboard.py plot $(DEMO_METRICS) \
	    --out docs/observability/dashboard.png; exit $$status
