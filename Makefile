# m2vae_fusion: set-up, tests and the main job. `make setup` is idempotent: stamps in .venv record what is done.
SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
MSGS_SRC := $(wildcard m2vae_fusion_msgs/package.xml m2vae_fusion_msgs/CMakeLists.txt m2vae_fusion_msgs/msg/*.msg)
REQS     := $(wildcard requirements*.txt)

.PHONY: setup test demo clean help bench-data
help:
	@echo "make setup   create $(VENV) with every pinned dependency (runtime, interface build, train/sim/bench extras,"
	@echo "             test tools), the interfaces and the package (editable, executables also in lib/m2vae_fusion/)"
	@echo "make demo    set up if needed, then run the main job (simulated multi-agent fusion)"
	@echo "make test    set up if needed, then run the whole test suite"
	@echo "make bench-data  install the benchmark-only data (Fashion-MNIST, Debian package; needs root)"

setup: $(VENV)/.stamp-project

$(VENV)/.stamp-deps: $(REQS) requirements.lock
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(PY) -m pip install -q -r requirements.txt -c requirements.lock 2>&1 | { grep -v 'is ignored: it is neither' || true; }
	@touch $@

$(VENV)/.stamp-msgs: $(VENV)/.stamp-deps scripts/build_msgs.sh $(MSGS_SRC)
	VENV=$(VENV) bash scripts/build_msgs.sh
	@touch $@

$(VENV)/.stamp-project: $(VENV)/.stamp-msgs setup.py setup.cfg package.xml scripts/ament_layout.py
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) scripts/ament_layout.py --prefix $(VENV)
	@touch $@

test: setup
	$(PY) -m pytest test

demo: setup
	@mkdir -p runs
	$(VENV)/bin/m2vae-fusion demo --json runs/demo.json --plot runs/demo.png

bench-data:
	bash scripts/install_bench_data.sh

clean:
	rm -rf $(VENV) build *.egg-info
