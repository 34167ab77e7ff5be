# The README's commands: `make deps demo` runs the main job, `make test` passes the tests.
SHELL := /bin/bash
VENV  ?= .venv
BUILD ?= build
JOBS  ?= $(shell nproc)
CUDA  ?= OFF
DEBUG_INFO ?= ON
DB    ?= results/runs.db
SSR   := $(BUILD)/ssr
TORCH_VERSION := 2.11.0
APT_PACKAGES := build-essential cmake git python3-venv libyaml-cpp-dev libsqlite3-dev libfmt-dev \
  libcli11-dev catch2 nlohmann-json3-dev libssl-dev libbenchmark-dev sqlite3 gnuplot-nox libgloo-dev libboost-math-dev \
  slurmctld slurmd slurm-client munge zlib1g-dev libturbojpeg0-dev dataset-fashion-mnist clang-format \
  libcpp-httplib-dev libjs-chart.js chromium

# The GPU machine has no package registry: `make offline-bundle` (here) downloads the Debian
# packages the build needs into .offline/debs; carried there, `make offline-build` unpacks them
# into a private prefix and builds with CUDA against that machine's own PyTorch (python3).
OFFLINE_PACKAGES := libyaml-cpp-dev libyaml-cpp0.7 libsqlite3-dev libsqlite3-0 libcli11-dev catch2 \
  nlohmann-json3-dev libssl-dev libssl3 zlib1g-dev libturbojpeg0-dev libturbojpeg0 dataset-fashion-mnist libgloo-dev
OFFLINE_ROOT := $(CURDIR)/.offline/root
PY ?= $(if $(wildcard $(VENV)/bin/python),$(VENV)/bin/python,python3)

.PHONY: deps build test demo clean offline-bundle offline-build gpu-bundle gpu-check paper demo-paper demo-vision study study-2k study-word routers-beyond

deps: $(VENV)/.torch-$(TORCH_VERSION)
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$( [ $$(id -u) -eq 0 ] || echo sudo ) apt-get install -y -qq $(APT_PACKAGES); fi

$(VENV)/.torch-$(TORCH_VERSION):
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check torch==$(TORCH_VERSION)
	touch $@

$(BUILD)/CMakeCache.txt:
	cmake -S . -B $(BUILD) -DSSR_CUDA=$(CUDA) -DSSR_DEBUG_INFO=$(DEBUG_INFO) \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)')"

build: $(BUILD)/CMakeCache.txt
	cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

demo: build
	$(SSR) train experiments/demo.yaml --db $(DB)

# Paper tables and figures from the run store (SCALE=paper by default; demo for the CPU study).
# Each reads the runs of its experiment file (ssr report --list) and writes results/tables/NAME.*
# or results/figures/NAME.{csv,png,pdf}; missing runs are shown as – and listed. OVERRIDES: the
# key=value overrides the sweeps were run with (part of each job's hash). Overhead columns and
# fig4 use `ssr bench step FILE --scale SCALE` sessions where the store has them.
SCALE   ?= paper
OVERRIDES ?=
TABLES  := table1 table2 table3 table4 table5 table6 table7 table8 table9
FIGURES := fig2 fig3 fig4 fig5
.PHONY: $(TABLES) $(FIGURES)
$(TABLES): build
	$(SSR) report $@ --db $(DB) --scale $(SCALE) $(OVERRIDES)
$(FIGURES): build
	$(SSR) report $@ --db $(DB) --scale $(SCALE) $(OVERRIDES) > /dev/null
	gnuplot $(dir $(DB))figures/$@.gp
paper: $(TABLES) $(FIGURES)

# The demo study on CPU: Table 1 (nine methods x conventional/momentum, 2 seeds) and the Table 5
# p-ablation at demo scale, Table 1's jobs timed interleaved by `ssr bench step` (its overheads and
# Figure 4 use that session), then their tables and Figures 2 and 4.
DEMO_JOBS ?= $(JOBS)
demo-paper: build
	$(SSR) data attack experiments/lm-demo.yaml > /dev/null
	$(SSR) sweep experiments/table1.yaml --scale demo --jobs $(DEMO_JOBS) --db $(DB)
	$(SSR) sweep experiments/table5-p-ssr-l-noise.yaml --scale demo --jobs $(DEMO_JOBS) --db $(DB)
	$(SSR) bench step experiments/table1.yaml --scale demo --threads 1 --warmup 3 --repeats 20 --db $(DB)
	$(MAKE) --no-print-directory table1 table5 fig2 fig4 SCALE=demo

# The CPU routing study (experiments/study.yaml and study-p.yaml; docs/studies.md "The routing study"):
# both sweeps, then their paired tables and curve figures, into $(DB) and results/{tables,figures}.
# A sweep reuses every finished run of the same config, so `make study` again trains only what has
# not finished (a job killed mid-run: `ssr sweep --resume ID`). STUDY_SCALE=smoke: the same pipeline
# in under 2 minutes.
STUDY_SCALE ?= study
STUDY_TABLES := study study_balance study_p
STUDY_FIGURES := study_valid study_load_cv study_max_vio study_dead study_entropy
study: build
	$(SSR) sweep experiments/study.yaml --scale $(STUDY_SCALE) --jobs $(JOBS) --db $(DB)
	$(SSR) sweep experiments/study-p.yaml --scale $(STUDY_SCALE) --jobs $(JOBS) --db $(DB)
	@for r in $(STUDY_TABLES); do $(SSR) report $$r --db $(DB) --scale $(STUDY_SCALE) || exit 1; done
	@for f in $(STUDY_FIGURES); do \
	  $(SSR) report $$f --db $(DB) --scale $(STUDY_SCALE) > /dev/null && gnuplot $(dir $(DB))figures/$$f.gp || exit 1; done

# The pre-registered 2,000-step p study (experiments/study-2k.yaml; docs/studies.md "The 2,000-step p
# study"): 9 arms x 18 seeds, seed by seed, so it can stop and go on (a worker killed mid-run: `ssr
# sweep --resume ID`), then its two pre-registered tables. STUDY_JOBS workers of one thread each.
STUDY_JOBS ?= $(JOBS)
study-2k: build
	$(SSR) sweep experiments/study-2k.yaml --scale $(STUDY_SCALE) --jobs $(STUDY_JOBS) --db $(DB)
	@for r in study-2k study-2k_balance; do $(SSR) report $$r --db $(DB) --scale $(STUDY_SCALE) || exit 1; done

# The word-level study (experiments/study-word.yaml; docs/studies.md "The word-level study"): the lm-demo
# recipe for 1,000 steps, SSR-L at the paper's p and at p calibrated to the paper's counts.
study-word: build
	$(SSR) sweep experiments/study-word.yaml --scale $(STUDY_SCALE) --jobs $(JOBS) --db $(DB)
	$(SSR) report study_word --db $(DB) --scale $(STUDY_SCALE)
	$(SSR) report study_word_valid --db $(DB) --scale $(STUDY_SCALE) > /dev/null && gnuplot $(dir $(DB))figures/study_word_valid.gp

# Routers beyond the paper in the same study (experiments/routers-beyond.yaml; docs/routers.md).
BEYOND_TABLES := beyond beyond_balance
BEYOND_FIGURES := beyond_max_vio beyond_token_mi
routers-beyond: build
	$(SSR) sweep experiments/routers-beyond.yaml --scale $(STUDY_SCALE) --jobs $(JOBS) --db $(DB)
	@for r in $(BEYOND_TABLES); do $(SSR) report $$r --db $(DB) --scale $(STUDY_SCALE) || exit 1; done
	@for f in $(BEYOND_FIGURES); do \
	  $(SSR) report $$f --db $(DB) --scale $(STUDY_SCALE) > /dev/null && gnuplot $(dir $(DB))figures/$$f.gp || exit 1; done

# Table 2 at demo scale: five routers on Fashion-MNIST (one job at a time: each uses 2 threads).
demo-vision: build
	$(SSR) sweep experiments/table2.yaml --scale demo --jobs 1 --db $(DB)
	$(MAKE) --no-print-directory table2 SCALE=demo

offline-bundle:
	mkdir -p .offline/debs
	cd .offline/debs && apt-get download $(OFFLINE_PACKAGES)
	@du -sh .offline/debs

offline-build:
	@ls .offline/debs/*.deb >/dev/null 2>&1 || { echo "error: .offline/debs is empty: run 'make offline-bundle' where apt works and carry .offline"; exit 2; }
	mkdir -p $(OFFLINE_ROOT)
	for f in .offline/debs/*.deb; do dpkg -x $$f $(OFFLINE_ROOT); done
	cmake -S . -B $(BUILD) -DSSR_CUDA=$(CUDA) \
	  -DCMAKE_PREFIX_PATH="$$($(PY) -c 'import torch; print(torch.utils.cmake_prefix_path)');$(OFFLINE_ROOT)/usr"
	cmake --build $(BUILD) -j $(JOBS)

# The GPU checks in one device call: `make build CUDA=ON gpu-bundle` here (.gpu/: the CUDA build,
# the libraries it loads, the test list and the data, which the device tool does not send), then
# `bash .ci/gpu-check` there with .gpu carried (.ci/gpu-check says how to build there instead).
gpu-bundle:
	bash .ci/gpu-bundle

gpu-check:
	bash .ci/gpu-check

clean:
	rm -rf $(BUILD)
