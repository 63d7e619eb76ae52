# dnibench: `make reproduce` and `make test` are the two commands that do everything.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is installed first and pinned: on these machines this release is a local CPU wheel;
# elsewhere pip takes PyPI's default build (CUDA on Linux x86_64). Override for another build,
# e.g. make reproduce TORCH_SPEC='torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128'
TORCH_SPEC ?= torch==2.13.0
PROFILE ?= quick
DEVICE ?= auto
SEEDS ?=
TRACKING_URI ?= sqlite:///results/mlflow.db
SUITES ?= suites/mnist_ff.yaml suites/mnist_async.yaml suites/mnist_unlock.yaml suites/mnist_delay.yaml suites/cifar10_ff.yaml \
          suites/rnn_copy.yaml suites/rnn_repeat_copy.yaml suites/rnn_ptb.yaml suites/rnn_multiscale.yaml
RUN_FLAGS ?=

.DEFAULT_GOAL := help
.PHONY: help venv reproduce run report test bench data clean-results

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.installed ## create the virtual environment and install dnibench into it

data: venv ## fetch and verify MNIST and Penn Treebank into the data cache
	$(VENV)/bin/dnibench data fetch mnist
	$(VENV)/bin/dnibench data fetch ptb

# `dnibench run` exits 1 when the suites finished but some run FAILED (diverged): the report is still
# written (it lists the failed runs), then make fails. Any other error stops before the report.
reproduce: venv ## run the suites at PROFILE (smoke|quick|paper) and write reports/
	status=0; $(VENV)/bin/dnibench run $(SUITES) --profile $(PROFILE) --device $(DEVICE) \
	  --tracking-uri $(TRACKING_URI) $(if $(SEEDS),--seeds $(SEEDS)) $(RUN_FLAGS) || status=$$?; \
	if [ $$status -gt 1 ]; then exit $$status; fi; \
	$(VENV)/bin/dnibench report --tracking-uri $(TRACKING_URI) --out reports && exit $$status

report: venv ## re-render reports/ from the MLflow store (no training)
	$(VENV)/bin/dnibench report --tracking-uri $(TRACKING_URI) --out reports

test: venv ## run the test suite (CPU, no data download, a few minutes)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -m "not integration" --durations=10

bench: venv ## pytest-benchmark: training steps/s and achieved FLOP/s
	@mkdir -p results
	$(PY) -m pytest -q benchmarks --benchmark-columns=mean,stddev,ops --benchmark-json=results/bench.json

clean-results: ## delete local runs and rendered reports (keeps the READMEs)
	rm -rf results/mlflow.db results/artifacts reports/*.{md,csv,tex,png,pdf}
