# `make demo` and `make test` each set up .venv on first use.
# make demo WEIGHTS=path/to/vgg16.pth renders with a local VGG16 checkpoint.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SEED ?= 0
WEIGHTS ?=

.PHONY: demo test clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

demo: $(VENV)/.installed
	$(BIN)/filterviz demo -o out --seed $(SEED) $(if $(WEIGHTS),--weights $(WEIGHTS))

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) out .pytest_cache
