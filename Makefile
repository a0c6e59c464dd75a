# Two commands do all the set-up on a fresh machine (Python 3.11, Node 20, npm):
#   make run    install what the default run needs, then run aideploy on it (ARGS="..." for overrides)
#   make test   install everything the tests use (extras, Azurite's npm packages), then run them
# A run that needs more installs it on first use: Azurite (npm ci) for the encrypted schemes' key
# store; scoring environments are built by aideploy itself (aideploy/uvenv.py).
PYTHON ?= python3
VENV   := .venv
EXTRAS := dev,azure,report,joblib,ray,onnx,mlflow,tracking
HASH   := $(shell cat pyproject.toml constraints.txt package-lock.json 2>/dev/null | cksum | cut -d' ' -f1)
CORE   := $(VENV)/.core-$(HASH)
FULL   := $(VENV)/.full-$(HASH)
# uv resolves everything in one pass within the versions the suite passed with (constraints.txt)
# and installs in parallel.
UV     := $(VENV)/bin/uv pip install --quiet --python $(VENV)/bin/python -c constraints.txt

.PHONY: run test install clean

run: $(CORE)
	$(VENV)/bin/aideploy $(ARGS)

# Two pytest processes (pytest-xdist), each taking whole test files: a file's module-scoped
# deployments and environments are made once, in one process.
test: $(FULL)
	$(VENV)/bin/python -m pytest -n 2 --dist loadfile $(PYTEST_ARGS)

install: $(FULL)

# Bytecode is compiled as modules are first imported (once, then cached), not all up front.
$(CORE):
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet uv
	$(UV) -e .
	rm -f $(VENV)/.core-*
	touch $@

# The tests start many processes: their bytecode is compiled once here, not in each of them.
$(FULL): $(CORE)
	$(UV) --compile-bytecode -e '.[$(EXTRAS)]'
	if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; fi
	rm -f $(VENV)/.full-*
	touch $@

clean:
	rm -rf $(VENV) node_modules
