# MSAT reproduction: `make help` lists the targets.
PYTHON ?= python3
STAMP := .make/install.stamp
PYTEST := WANDB_MODE=disabled $(PYTHON) -m pytest
DEMO_OUT ?= outputs/demo

.DEFAULT_GOAL := help
.PHONY: help install test test-full demo report lint bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## install the package (pinned torch 2.14.1 / torchvision 0.29.1) and dev tools

$(STAMP): pyproject.toml
	$(PYTHON) -m pip install -q -e '.[dev]'
	@mkdir -p $(dir $@) && touch $@

test: install ## the fast suite (what CI runs)
	$(PYTEST) -m "not slow" -q

test-full: install ## every test, the slow real-data runs included
	$(PYTEST) -q

demo: install ## train on the bundled digits, convert, evaluate const vs MSAT at every t
	$(PYTHON) train_ann.py experiment=demo paths.root=$(DEMO_OUT)
	$(PYTHON) evaluate.py -m experiment=demo method=const,msat paths.root=$(DEMO_OUT) \
		hydra.sweep.dir=$(DEMO_OUT)/eval
	$(PYTHON) -m msat.report $(DEMO_OUT)/eval --curves

report: install ## gather results.json files under OUT (default outputs) into markdown tables
	$(PYTHON) -m msat.report $(or $(OUT),outputs)

bench: install ## simulation speed and memory benchmark (CPU)
	$(PYTHON) benchmarks/simulate.py

lint: install ## ruff
	$(PYTHON) -m ruff check src tests benchmarks *.py

clean: ## remove outputs and caches (not data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache .make
