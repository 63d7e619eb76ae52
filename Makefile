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
REPORTS ?= reports
SUITES ?= suites/mnist_ff.yaml suites/mnist_async.yaml suites/mnist_unlock.yaml suites/mnist_delay.yaml suites/cifar10_ff.yaml \
          suites/rnn_copy.yaml suites/rnn_repeat_copy.yaml suites/rnn_ptb.yaml suites/rnn_multiscale.yaml \
          suites/parallel.yaml
RUN_FLAGS ?=
# JOBS=N: N runs at once, each in a worker process with its share of the free cores (dnibench run --jobs)
JOBS ?= 1

.DEFAULT_GOAL := help
.PHONY: help venv reproduce run report test bench data clean-results mutation chaos

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
	  --tracking-uri $(TRACKING_URI) $(if $(SEEDS),--seeds $(SEEDS)) --jobs $(JOBS) $(RUN_FLAGS) || status=$$?; \
	if [ $$status -gt 1 ]; then exit $$status; fi; \
	$(VENV)/bin/dnibench report --tracking-uri $(TRACKING_URI) --out $(REPORTS) && exit $$status

report: venv ## re-render reports/ from the MLflow store (no training)
	$(VENV)/bin/dnibench report --tracking-uri $(TRACKING_URI) --out $(REPORTS)

# TEST_JOBS=N: N pytest processes (pytest-xdist), each test file in one of them (its module fixtures built once);
# 2 by default, the CI machine's cores (12:09 in one process, 7:52 in two, on this 2-core box); 0: one process.
TEST_JOBS ?= 2
test: venv ## run the test suite (CPU, no data download, a few minutes)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q -m "not integration" -n $(TEST_JOBS) --dist loadfile --durations=10

# mutmut mutates a copy of dnibench/ in mutants/ (never the tree) and runs the DNI core's unit tests
# against every mutant ([tool.mutmut] in pyproject.toml). A fresh run each time: cached verdicts could
# outlive the tests that gave them. MUTATION_JOBS=N: N mutants at a time (default: one per CPU).
# Address space capped per process (KiB): one mutant builds 1024 hidden layers of 1024 units and
# would take the machine's memory before its timeout; under the cap it fails at once (killed).
MUTATION_MEM_KB ?= 8000000
$(VENV)/.mutation-installed: $(VENV)/.installed
	$(PY) -m pip install -q -e '.[dev,mutation]'
	@touch $@

mutation: $(VENV)/.mutation-installed ## mutation testing of the DNI core (slow, not in CI); fails on a survivor tests/MUTATION.md does not explain
	rm -rf mutants
	ulimit -v $(MUTATION_MEM_KB); OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run $(if $(MUTATION_JOBS),--max-children $(MUTATION_JOBS)) > mutants.log 2>&1 \
	  || { tail -n 40 mutants.log; exit 1; }
	@mv mutants.log mutants/run.log
	@tail -c 400 mutants/run.log | tr '\r' '\n' | tail -n 2
	$(VENV)/bin/mutmut results --all true > mutants/results.txt
	$(PY) tests/mutation_report.py mutants/results.txt tests/MUTATION.md

# Real `dnibench run` processes on tiny fake-MNIST suites, killed (kill -9, SIGTERM, SIGINT) at random
# moments or started two at once on a fresh store; each round ends with a clean rerun and a check of the
# store. CHAOS_INJECTIONS=N faults in all (about 15 s each on 2 shared cores); fails on any lost run.
CHAOS_INJECTIONS ?= 50
chaos: venv ## fault injection (not in CI): kill -9/SIGTERM/SIGINT at random moments, concurrent starts; prints counts
	OMP_NUM_THREADS=1 $(PY) tests/chaos.py --injections $(CHAOS_INJECTIONS)

bench: venv ## pytest-benchmark: steps/s, FLOP/s, each FF step vs a hand-written loop, contention and late-training ratios
	@mkdir -p results
	$(PY) -m pytest -q benchmarks --benchmark-columns=mean,stddev,ops --benchmark-json=results/bench.json

clean-results: ## delete the default store, its artifacts and the files dnibench report wrote (listed)
	$(PY) -m dnibench.cli clean --out reports --tracking-uri sqlite:///results/mlflow.db
