# kashforce: the everyday commands. `make run` for a local trial, `make test` for the suite.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
# The simulators' ports for `make run` (move them when something else uses 8443 or 8080).
SANDBOX_SALESFORCE_PORT ?= 8443
SANDBOX_KASHFLOW_PORT ?= 8080

.PHONY: run test check chaos venv serve clean bench bench-small proto

$(VENV)/.installed: requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

venv: $(VENV)/.installed

# Set up and run the product on its embedded defaults: SQLite, the sandbox simulators, demo users.
run: venv
	$(PY) manage.py migrate --noinput
	$(PY) manage.py demo_users
	SANDBOX_SALESFORCE_PORT=$(SANDBOX_SALESFORCE_PORT) SANDBOX_KASHFLOW_PORT=$(SANDBOX_KASHFLOW_PORT) \
	  bash scripts/run-local.sh $(HOST) $(PORT)

# The whole suite (set DATABASE_URL to run it on PostgreSQL).
test: venv
	$(PY) -m pytest $(PYTEST_ARGS)

# Lint, formatting, migrations in step with models, deployment checks with production variables.
check: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) manage.py makemigrations --check --dry-run
	DEBUG=false SECRET_KEY=check-deploy-$$(date +%s)-0123456789abcdefghijklmnopqrstuvwxyz-ABCDEFGH \
	  KASHFORCE_ENCRYPTION_KEYS=$$($(PY) -c 'from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())') \
	  ALLOWED_HOSTS=kashforce.example.co.uk KASHFORCE_VAR_DIR=$$(mktemp -d) CACHE_URL=dbcache://kashforce_cache \
	  $(PY) manage.py check --deploy --fail-level WARNING

# The fault campaign at full size: 1,000 won deals, customers and payments under ~20% API faults
# and SIGKILLed workers, then checked against both simulators (a CI-sized one is in the suite).
# On PostgreSQL: it makes and drops a database of its own on the server DATABASE_URL names.
CHAOS_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/postgres
chaos: venv
	$(PY) scripts/chaos.py faults --opportunities 1000 --kills 10 --database-url $(CHAOS_DATABASE_URL) $(CHAOS_ARGS)

# Benchmarks against the sandbox (50 ms a call unless LATENCY_MS says otherwise), beside a naive
# baseline; they write benchmarks/results.json and docs/benchmarks.md. bench-small takes minutes.
LATENCY_MS ?= 50
bench: venv
	$(PY) -m benchmarks.run --latency-ms $(LATENCY_MS) $(BENCH_ARGS)

bench-small: venv
	$(PY) -m benchmarks.run --small --latency-ms $(LATENCY_MS) $(BENCH_ARGS)

# The Pub/Sub API modules, generated from eventbus/pubsub_api.proto and committed (CI and installs
# need no protoc). Needs grpcio-tools from requirements-dev.txt.
proto: venv
	$(PY) -m grpc_tools.protoc -I. --python_out=. --grpc_python_out=. eventbus/pubsub_api.proto

clean:
	rm -rf $(VENV) .pytest_cache
