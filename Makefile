# The two commands a newcomer needs: `make run` and `make test`. Both build the environment first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
UV     := $(BIN)/uv
MEMBERS := $(wildcard libs/*/pyproject.toml services/*/pyproject.toml)
EDITABLES := $(foreach m,$(MEMBERS),-e $(dir $(m)))

.PHONY: run test env lock proto proto-check lint typecheck check clean

run: env
	$(BIN)/onefold up $(ARGS)

test: env
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Exact pins with hashes from the committed locks; workspace members editable, without fetching anything unpinned.
env: $(VENV)/.installed
$(VENV)/.installed: requirements.lock requirements-bootstrap.lock $(MEMBERS) pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --require-hashes --no-deps -r requirements-bootstrap.lock
	$(UV) pip install -q --python $(BIN)/python --require-hashes -r requirements-bootstrap.lock -r requirements.lock
	$(UV) pip install -q --python $(BIN)/python --no-deps --no-build-isolation $(EDITABLES)
	# Bytecode once, now: where PYTHONDONTWRITEBYTECODE is set, Python would otherwise compile every
	# module again on each start (`onefold --help` several times slower; `onefold bench cli`).
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib $(wildcard libs/*/src services/*/src)
	touch $@

# Maintainers: re-resolve after changing dependencies (needs uv), then commit both exported locks.
lock: env
	$(UV) lock
	$(UV) export --frozen --all-groups --no-group bootstrap --no-emit-workspace --no-header -o requirements.lock
	$(UV) export --frozen --only-group bootstrap --no-emit-workspace --no-header -o requirements-bootstrap.lock

proto: env
	$(BIN)/python scripts/gen_protos.py

proto-check: env
	$(BIN)/python scripts/gen_protos.py --check

lint: env
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: env
	$(BIN)/mypy libs/*/src services/*/src

check: proto-check lint typecheck

clean:
	rm -rf $(VENV)
