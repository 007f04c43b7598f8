# MSAT reproduction: `make help` lists the targets.
PYTHON ?= python3
STAMP := .make/install.stamp
PYTEST := WANDB_MODE=disabled $(PYTHON) -m pytest
DEMO_OUT ?= outputs/demo

.DEFAULT_GOAL := help
.PHONY: help install test test-e2e test-isa check test-full demo report reproduce-cifar10 search-cifar10 lint bench clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-10s\033[0m %s\n", $$1, $$2}'

install: $(STAMP) ## install the package and dev tools, pinned by constraints.txt (torch 2.14.1, torchvision 0.29.1)

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m pip install -q -c constraints.txt -e '.[dev]'
	@mkdir -p $(dir $@) && touch $@

test: install ## the fast tier (under 3 minutes): no subprocess runs, no training
	$(PYTEST) -m "not slow and not e2e" -q

test-e2e: install ## the end-to-end tier: the CLI as a user runs it, training, the reproduction's quick mode
	$(PYTEST) -m "e2e and not slow" -q

test-isa: install ## the compiled-vs-eager agreement tests again under ATEN_CPU_CAPABILITY=avx2, with a compiler cache of their own
	@cache=$$(mktemp -d) && ATEN_CPU_CAPABILITY=avx2 TORCHINDUCTOR_CACHE_DIR=$$cache $(PYTEST) -m compile -q -p no:cacheprovider; \
		rc=$$?; rm -rf $$cache; exit $$rc

check: install ## what CI runs: the fast tier, the end-to-end tier, then the compiled-vs-eager tests under AVX2
	$(PYTEST) -m "not slow and not e2e" -q
	$(PYTEST) -m "e2e and not slow" -q
	$(MAKE) -s test-isa

test-full: install ## every test, the slow real-data runs included
	$(PYTEST) -q

demo: install ## train on the bundled digits, convert, evaluate const vs MSAT at every t
	$(PYTHON) train_ann.py experiment=demo paths.root=$(DEMO_OUT)
	$(PYTHON) evaluate.py -m experiment=demo method=const,msat paths.root=$(DEMO_OUT) \
		hydra.sweep.dir=$(DEMO_OUT)/eval
	$(PYTHON) -m msat.report $(DEMO_OUT)/eval --curves

report: install ## gather results.json files under OUT (default outputs) into markdown tables
	$(PYTHON) -m msat.report $(or $(OUT),outputs)

DATA ?= ../shared/datasets/cifar10-jpeg
CKPT ?= docs/results/cifar10/vgg16_w0.25.pt
RESULTS ?= docs/results/cifar10
RUNS ?= outputs/reproduce_cifar10
reproduce-cifar10: install ## CIFAR-10 results: every method on 2000 test images to T=256 (DATA, CKPT, RESULTS, RUNS, ARGS)
	$(PYTHON) -m msat.reproduce --data $(DATA) --checkpoint $(CKPT) --out $(RESULTS) --runs $(RUNS) \
		$(if $(SEARCH),--search $(SEARCH)) $(ARGS)

search-cifar10: install ## the fewest-steps search on held-out training images (then: make reproduce-cifar10 SEARCH=...)
	$(PYTHON) -m msat.search --data $(DATA) --checkpoint $(CKPT) --out $(RESULTS)

bench: install ## simulation speed and memory benchmark (CPU)
	$(PYTHON) benchmarks/simulate.py

lint: install ## ruff
	$(PYTHON) -m ruff check src tests benchmarks *.py

clean: ## remove outputs and caches (not data/)
	rm -rf outputs multirun .pytest_cache .ruff_cache .make
