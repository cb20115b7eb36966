# OptiServe developer entry points. `make demo` and `make test` are the two commands of the README.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: setup controlplane demo test unit lint bench e2e clean

setup:
	@scripts/setup.sh

# A real kube-apiserver, etcd and controller manager for the cluster-tier tests, built from source
# (cached outside the repository; minutes the first time, instant afterwards).
controlplane:
	@tests/controlplane/build.sh

# The main job on this machine, no cluster: optimize MiniLM, prove it against PyTorch, serve baseline
# and candidate on tritonserver, canary through nginx judged on Prometheus, promote; report in $(OUT)/minilm.
# Exit code 0: promoted; 2: rolled back.
demo: setup
	$(VENV)/bin/optiserve run -f examples/minilm/optimizedmodel.yaml --report $(OUT)/demo --job-cache $(OUT)/job-cache

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy operator optimizer_jobs bench tests e2e

test: setup controlplane lint
	$(VENV)/bin/pytest -q

unit: setup
	$(VENV)/bin/pytest -q tests/unit

bench: setup
	$(PY) bench/optimizer.py --out bench/results
	$(PY) bench/canary.py

e2e:
	@e2e/run.sh

clean:
	rm -rf $(OUT) bench/results .pytest_cache .mypy_cache .ruff_cache
