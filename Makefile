# geodispatch: `make help` lists every target.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
GD := $(VENV)/bin/geodispatch
STAMP := $(VENV)/.installed
PYTHON ?= python3
PYTEST_ARGS ?=

.PHONY: help setup infra-up infra-down topics run test test-unit lint demo bench faults clean

help: ## list every target with one line each
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk -F':.*?## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev,plots]'
	@touch $@

setup: $(STAMP) ## create .venv and install the project with its dev tools

infra-up: setup ## start Kafka (KRaft) and Redis on 127.0.0.1, unless KAFKA_BOOTSTRAP_SERVERS / REDIS_URL point elsewhere
	@if [ -n "$$KAFKA_BOOTSTRAP_SERVERS" ]; then echo "kafka: using $$KAFKA_BOOTSTRAP_SERVERS (KAFKA_BOOTSTRAP_SERVERS is set)"; else infra/kafka/kafka.sh up; fi
	@if [ -n "$$REDIS_URL" ]; then echo "redis: using REDIS_URL from the environment"; else infra/redis.sh up; fi

infra-down: ## stop the Kafka and Redis that infra-up started
	@infra/kafka/kafka.sh down
	@infra/redis.sh down

topics: infra-up ## create or update every topic of the plan (idempotent)
	$(GD) topics apply

run: topics ## start one worker (HTTP on :6066)
	$(GD) worker

test-unit: setup ## unit tests only: no broker, no Redis
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

test: topics ## set up, start Kafka and Redis, run every test
	GEODISPATCH_REQUIRE_INFRA=1 $(PY) -m pytest $(PYTEST_ARGS)

lint: setup ## ruff
	$(VENV)/bin/ruff check .

clean: infra-down ## stop everything and remove caches (keeps the downloaded broker jars)
	rm -rf .cache/kafka/run .cache/redis .cache/worker .pytest_cache

demo: topics ## run the pipeline and show what it does (until the simulator lands: a worker)
	$(GD) worker
