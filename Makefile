# Two commands do all the set-up on a fresh machine (Python 3.11, Node 20, npm):
#   make run    install, then run aideploy on the embedded default (ARGS="..." for overrides)
#   make test   install, then run the test suite
PYTHON ?= python3
VENV   := .venv
EXTRAS := dev,azure,report,joblib,ray,onnx,mlflow,tracking
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt package-lock.json 2>/dev/null | cksum | cut -d' ' -f1)

.PHONY: run test install clean

run: $(STAMP)
	$(VENV)/bin/aideploy $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

install: $(STAMP)

# uv resolves everything in one pass (the extras' pins must agree with azmlinfsrv's), within
# the versions the suite passed with (constraints.txt), and installs in parallel; bytecode is
# compiled once here, not in every process the tests start.
$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet uv
	$(VENV)/bin/uv pip install --quiet --compile-bytecode --python $(VENV)/bin/python -c constraints.txt -e '.[$(EXTRAS)]'
	if [ -f package-lock.json ]; then npm ci --no-audit --no-fund --loglevel=error; fi
	rm -f $(VENV)/.installed-*
	touch $@

clean:
	rm -rf $(VENV) node_modules
