# The README's commands: `make deps demo` runs the main job, `make test` passes the tests.
SHELL := /bin/bash
VENV  ?= .venv
BUILD ?= build
JOBS  ?= $(shell nproc)
CUDA  ?= OFF
DB    ?= results/runs.db
SSR   := $(BUILD)/ssr
TORCH_VERSION := 2.11.0
APT_PACKAGES := build-essential cmake git python3-venv libyaml-cpp-dev libsqlite3-dev libfmt-dev \
  libcli11-dev catch2 nlohmann-json3-dev libssl-dev libbenchmark-dev sqlite3 gnuplot-nox

.PHONY: deps build test demo clean

deps: $(VENV)/.torch-$(TORCH_VERSION)
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get install -y -qq $(APT_PACKAGES); fi

$(VENV)/.torch-$(TORCH_VERSION):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check torch==$(TORCH_VERSION)
	touch $@

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DSSR_CUDA=$(CUDA) \
	  -DCMAKE_PREFIX_PATH="$$($(VENV)/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')"

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	$(SSR) train experiments/demo.yaml --db $(DB)

clean:
	rm -rf $(BUILD)
