# make demo: set up, then run the offline demo.   make test: set up, then run the whole test suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
FASHION_MNIST := /usr/share/datasets/fashion-mnist

.PHONY: setup demo test fashion-mnist chromium clean

setup: $(VENV)/.installed fashion-mnist chromium

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $@

# Real offline images for the demo: Debian's dataset-fashion-mnist, installed when missing and root.
fashion-mnist:
	@if [ ! -d $(FASHION_MNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) && \
	    echo "installed dataset-fashion-mnist"; \
	  else \
	    echo "note: $(FASHION_MNIST) is missing; run 'sudo apt-get install dataset-fashion-mnist' or pass --data-root"; \
	  fi; \
	fi

# Headless browser for the report test (the HTML report must open without errors): Debian's
# chromium, installed when missing and root.
chromium:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null)) && \
	    echo "installed chromium"; \
	  else \
	    echo "note: chromium is missing; run 'sudo apt-get install chromium' (the HTML report test is skipped without it)"; \
	  fi; \
	fi

demo: setup
	$(BIN)/mmcoa demo --output runs/demo

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
