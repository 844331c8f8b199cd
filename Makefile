# make demo: run the SGL demo on tiny built-in models (CPU, seconds), in .venv (transformers 5.23)
# make test: run the test suite in each of the five environments below, two at a time;
#            it fails if any run fails (a pytest exit code 5, nothing collected, included)
#   make test-5.23  .venv       requirements-test.txt (CPU torch 2.13.0, transformers 5.23.0): native classes
#   make test-4.49  .venv-4.49  requirements/legacy-4.49.txt (torch 2.14.1, transformers 4.49.0)
#   make test-4.37  .venv-4.37  requirements/legacy-4.37.txt (torch 2.14.1, transformers 4.37.2)
#   make test-lmms  .venv-lmms  requirements/lmms-5.23.txt (lmms-eval 0.7.3, torch 2.14.1 + torchvision,
#                               transformers 5.23.0): tests/lmms only, lmms-eval's CLI with and without SGL
#   make test-lmms-4.49  .venv-lmms-4.49  requirements/lmms-4.49.txt (lmms-eval 0.7.3 on the legacy-4.49
#                               pins): lmms-eval's internvl2 wrapper (InternVL2's remote code) on the CPU
# The legacy environments run the original codebases (InternVL2's own model code, the llava
# package); each test run skips the modules meant for the other line, with the reason.
# Every environment is built from exact pins before the package itself (a stamp file per venv).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LEGACY := 4.49 4.37
# the llava package's own pins (transformers 4.37.2, torch 2.1.2, ...) would replace ours: no deps
LLAVA_TORCH := llava-torch==1.2.2.post1
LMMS := .venv-lmms
LMMS_449 := .venv-lmms-4.49

.PHONY: demo test test-5.23 test-lmms test-lmms-4.49 $(addprefix test-,$(LEGACY)) clean

demo: $(VENV)/.installed
	$(BIN)/sgl-patch demo

# The environments are built side by side first (downloads and unpacking overlap; one that fails
# to build is tried again, and reported, by its test target).  Then the five test runs go in
# TEST_LANES parallel lanes (-k: every run goes on when another fails, so one CI run reports them
# all), each run's output printed whole when it ends.  Each pytest process gets TEST_THREADS torch
# threads: two lanes of one thread use two cores without the oversubscription that makes tiny
# models' kernels spin.
ENV_STAMPS := $(VENV)/.installed $(foreach v,$(LEGACY),.venv-$(v)/.installed) $(LMMS)/.installed $(LMMS_449)/.installed
# the two longest runs first, one per lane
TEST_RUNS := test-5.23 test-lmms $(addprefix test-,$(LEGACY)) test-lmms-4.49
TEST_LANES ?= 2
TEST_THREADS ?= 1
SUBMAKE = $(MAKE) --no-print-directory -f $(firstword $(MAKEFILE_LIST))

test:
	@start=$$(date +%s); \
	$(SUBMAKE) -j4 --output-sync=target $(ENV_STAMPS) || echo "make test: an environment failed to build"; \
	echo "make test: environments ready in $$(( $$(date +%s) - start )) s"; \
	start=$$(date +%s); \
	if OMP_NUM_THREADS=$(TEST_THREADS) $(SUBMAKE) -k -j$(TEST_LANES) --output-sync=target $(TEST_RUNS); then \
		echo "make test: passed in every environment ($(TEST_RUNS)) in $$(( $$(date +%s) - start )) s"; \
	else \
		echo "make test: FAILED (see the runs above that report errors)"; exit 1; \
	fi

# each run reports its own time (the lanes overlap) and gets its own transformers module cache:
# remote code (InternVL2's) is copied there without a lock, and two legacy runs may overlap
TIMED = start=$$(date +%s); export HF_MODULES_CACHE=$$(mktemp -d); \
	trap 'rm -rf "$$HF_MODULES_CACHE"; echo "make $@: $$(( $$(date +%s) - start )) s"' EXIT;

test-5.23: $(VENV)/.installed
	@$(TIMED) $(BIN)/python -m pytest -q tests

$(VENV)/.installed: requirements-test.txt pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -r requirements-test.txt
	$(BIN)/python -m pip install -e .
	touch $@

# lmms-eval's environment runs tests/lmms only (the rest of the suite is test-5.23's, on the same
# transformers); an explicit rule, so the legacy pattern rule below does not match it
test-lmms: $(LMMS)/.installed
	@$(TIMED) $(LMMS)/bin/python -m pytest -q tests/lmms

$(LMMS)/.installed: requirements/lmms-5.23.txt pyproject.toml setup.py
	test -x $(LMMS)/bin/python || $(PYTHON) -m venv $(LMMS)
	$(LMMS)/bin/python -m pip install -r requirements/lmms-5.23.txt
	$(LMMS)/bin/python -m pip install --no-deps -e .
	touch $@

# lmms-eval on the legacy 4.49 pins runs its internvl2 wrapper only (InternVL2's remote code, under
# the test-only CUDA->CPU shim tests/lmms/cuda_on_cpu); an explicit rule, as for test-lmms
test-lmms-4.49: $(LMMS_449)/.installed
	@$(TIMED) $(LMMS_449)/bin/python -m pytest -q tests/lmms/test_internvl2_wrapper.py

$(LMMS_449)/.installed: requirements/lmms-4.49.txt requirements/legacy-4.49.txt requirements/legacy-base.txt \
		pyproject.toml setup.py
	test -x $(LMMS_449)/bin/python || $(PYTHON) -m venv $(LMMS_449)
	$(LMMS_449)/bin/python -m pip install -r requirements/lmms-4.49.txt
	$(LMMS_449)/bin/python -m pip install --no-deps -e .
	touch $@

$(addprefix test-,$(LEGACY)): test-%: .venv-%/.installed
	@$(TIMED) .venv-$*/bin/python -m pytest -q tests

.PRECIOUS: .venv-%/.installed
.venv-%/.installed: requirements/legacy-%.txt requirements/legacy-base.txt pyproject.toml setup.py
	test -x .venv-$*/bin/python || $(PYTHON) -m venv .venv-$*
	.venv-$*/bin/python -m pip install -r requirements/legacy-$*.txt
	.venv-$*/bin/python -m pip install --no-deps $(LLAVA_TORCH)
	.venv-$*/bin/python -m pip install --no-deps -e .
	touch $@

clean:
	rm -rf $(VENV) $(addprefix .venv-,$(LEGACY)) $(LMMS) $(LMMS_449) build *.egg-info
