# OptiServe developer entry points. `make demo` and `make test` are the two commands of the README.
VENV ?= .venv
PY := $(VENV)/bin/python
OUT ?= out

.PHONY: setup controlplane e2e-tools demo test unit lint bench e2e clean

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

# The real-pod scenarios `make test` runs (the rest run in `make e2e`; docs/e2e.md says why).
E2E_IN_TEST ?= e2e/test_rollout.py

# A Docker engine, mmdebstrap, and the node's binaries built from Go modules (cached outside the repository).
e2e-tools:
	@scripts/setup_docker.sh
	@e2e/node/build.sh

test: setup controlplane e2e-tools lint
	E2E_REQUIRE=1 $(VENV)/bin/pytest -q --durations=25 tests $(E2E_IN_TEST)

unit: setup
	$(VENV)/bin/pytest -q tests/unit

bench: setup
	$(PY) bench/optimizer.py --out bench/results
	$(PY) bench/canary.py

e2e:
	@e2e/run.sh

clean:
	rm -rf $(OUT) bench/results .pytest_cache .mypy_cache .ruff_cache
