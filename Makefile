# Two commands do all the set-up on a fresh machine:
#   make study   the quickstart study on the embedded digits-LT data (no download)
#   make test    the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: study test cifar10 bench lock clean-results

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements-lock.txt -e ".[dev]"
	touch $(STAMP)

# ltr_core runs the AVX2 kernels of MKL, oneDNN and ATen on every x86 CPU (LTR_NATIVE_ISA=1 opts out): the
# same numbers on AVX2-only and AVX-512/AMX CPUs (README "Reproducibility")
study: $(STAMP)
	$(VENV)/bin/ltr suite params/suites/quickstart.yaml --workers 3

# one BLAS/OpenMP thread per process: the tests use tiny models (and 2-process DDP), where more threads only contend
test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest -q

# CIFAR-10-LT CE, IR 100 and 10 (LDAM-DRW schedule); needs the data: LTR_DATA_ROOT=... make cifar10
cifar10: $(STAMP)
	$(VENV)/bin/ltr suite params/suites/cifar10_lt.yaml

bench: $(STAMP)
	$(VENV)/bin/ltr bench

lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable | grep -v '^ltr-study' > requirements-lock.txt

clean-results:
	rm -rf results
