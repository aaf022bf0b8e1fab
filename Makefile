# Two commands for a fresh machine: `make demo` (the pipeline end to end on the bundled
# default) and `make test` (the whole test suite). Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/demo
DEMO_PER_CLASS ?= 300
DEMO_GRPC_PORT ?= 8500
DEMO_REST_PORT ?= 8501
DEMO_IMAGE_SIZE ?= 96

.PHONY: demo demo-steps demo-rollout test lint venv system-deps clean

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# Offline demo data (Fashion-MNIST) comes from Debian's dataset-fashion-mnist package; the
# demo's last step calls the server with curl.
system-deps:
	@missing=""; \
	[ -d /usr/share/datasets/fashion-mnist ] || missing="dataset-fashion-mnist"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "note: not installed: $$missing (Fashion-MNIST then comes from the online download)"; \
	  fi; \
	fi

# Demo data, a weights check, training, evaluation, export, then the local server
# answering the clients and curl. Re-running reuses the data and the finished
# (or interrupted) training run in $(DEMO_DIR).
DEMO_TRAIN_FLAGS ?= --noaugment --phase1_epochs=5 --phase2_epochs=2 \
	--phase2_warmup_epochs=0 --batch_size=32
# The summary's first line, from train.evaluate's results file.
DEMO_RESULT = import json, sys; print("{split}: {examples} images, top-1 {top1:.4f}, \
	top-5 {top5:.4f}".format(**json.load(open(sys.argv[1]))))
DEMO_SERVE = $(PY) -m serving --port=$(DEMO_GRPC_PORT) --rest_api_port=$(DEMO_REST_PORT) \
	--model_name=fashion --model_base_path=$(abspath $(DEMO_DIR))/models/fashion

# Starts the local server on the demo model in the background and waits until a version
# is AVAILABLE; the EXIT trap stops it when the recipe line ends, however it ends. Use it
# at the start of a recipe line that continues with a backslash.
define start_demo_server
$(DEMO_SERVE) > $(DEMO_DIR)/server.log 2>&1 & server=$$!; \
trap 'kill $$server 2>/dev/null; wait $$server; echo "Server stopped (log: $(DEMO_DIR)/server.log)"' EXIT; \
for i in $$(seq 300); do \
  $(PY) -m clients status --server=http://localhost:$(DEMO_REST_PORT) --model=fashion \
    2>/dev/null | grep -q AVAILABLE && break; \
  kill -0 $$server 2>/dev/null || { echo "server failed:"; tail -5 $(DEMO_DIR)/server.log; exit 1; }; \
  sleep 1; \
done;
endef

demo: venv system-deps
	@$(MAKE) --no-print-directory demo-steps

# The demo without its set-up (tests/test_first_run.py runs these steps on a tiny dataset).
demo-steps:
	@echo "== 1/6 Fashion-MNIST as class-per-folder JPEGs in $(DEMO_DIR)/data"
	$(PY) -m train.datasets fashion_mnist --out=$(DEMO_DIR)/data --per_class=$(DEMO_PER_CLASS)
	$(PY) -m train.datasets inspect --data_dir=$(DEMO_DIR)/data --image_size=$(DEMO_IMAGE_SIZE)
	@echo "== 2/6 Weights check: lite0 with its ImageNet head on two well-known photos"
	$(PY) -m train.backbones classify --backbone=lite0 $$($(PY) -c 'import pathlib, skimage; \
	  d = pathlib.Path(skimage.__file__).parent / "data"; print(d / "chelsea.png", d / "coffee.png")')
	@echo "== 3/6 Two-phase fine-tuning of lite0 (a few minutes on 2 CPU cores)"
	$(PY) -m train --data_dir=$(DEMO_DIR)/data --output_dir=$(DEMO_DIR)/model \
	  --image_size=$(DEMO_IMAGE_SIZE) $(DEMO_TRAIN_FLAGS)
	@echo "== 4/6 Evaluation on the held-out test split"
	$(PY) -m train.evaluate --model_dir=$(DEMO_DIR)/model --data_dir=$(DEMO_DIR)/data
	@echo "== 5/6 Export as a TF Serving model (versioned SavedModel taking JPEG bytes)"
	@versions=$$(ls $(DEMO_DIR)/models/fashion 2>/dev/null | grep -E '^[0-9]+$$' | sort -n); \
	if [ -n "$$versions" ]; then \
	  echo "Already exported: $(DEMO_DIR)/models/fashion/$$(echo "$$versions" | tail -1)"; \
	else \
	  $(PY) -m export --model_dir=$(DEMO_DIR)/model --export_base=$(DEMO_DIR)/models/fashion; \
	fi
	@echo "== 6/6 Local TF-Serving-compatible server; held-out images over gRPC, REST and curl"
	@$(start_demo_server) \
	images=$$(find $(DEMO_DIR)/data/test -name '*.jpg' | sort | awk 'NR % $(DEMO_PER_CLASS) == 1'); \
	echo "-- gRPC (clients library)"; \
	$(PY) -m clients predict --server=grpc://localhost:$(DEMO_GRPC_PORT) --model=fashion \
	  --top_k=2 --progress=off $$images || exit 1; \
	echo "-- REST (clients library)"; \
	$(PY) -m clients predict --server=http://localhost:$(DEMO_REST_PORT) --model=fashion \
	  --top_k=2 --progress=off $$images || exit 1; \
	echo "-- curl (clients/examples/predict_row.sh)"; \
	if command -v curl >/dev/null; then \
	  SERVER=http://localhost:$(DEMO_REST_PORT) MODEL=fashion \
	    clients/examples/predict_row.sh $$(echo "$$images" | head -1) | cut -c1-160; echo; \
	else echo "curl is not installed: skipped"; fi
	@echo "== Summary"
	@$(PY) -c '$(DEMO_RESULT)' $(DEMO_DIR)/model/evaluation_test.json
	@version=$$(ls $(DEMO_DIR)/models/fashion | grep -E '^[0-9]+$$' | sort -n | tail -1); \
	echo "training curves   $(DEMO_DIR)/model/training_curves.png"; \
	echo "confusion matrix  $(DEMO_DIR)/model/confusion_matrix_test.png"; \
	echo "trained model     $(DEMO_DIR)/model/model.keras"; \
	echo "export            $(DEMO_DIR)/models/fashion/$$version"; \
	echo "serve:   $(DEMO_SERVE)"; \
	echo "call:    $(PY) -m clients predict --server=grpc://localhost:$(DEMO_GRPC_PORT)" \
	  "--model=fashion $$(find $(DEMO_DIR)/data/test -name '*.jpg' | sort | head -1)"; \
	echo "deploy:  $(PY) -m export --model_dir=$(DEMO_DIR)/model --export_base=models/effnet" \
	  "&& kubectl apply -k k8s/overlays/dev"; \
	echo "         (k8s/ serves models/effnet; build and load the image first: k8s/README.md," \
	  "\"Local cluster\")"

# After `make demo`: the running server picks up a newly exported version without a
# restart (it polls the base path, warms the new version up, then retires the old one).
demo-rollout: venv
	@test -d $(DEMO_DIR)/models/fashion || { echo "run make demo first"; exit 1; }
	@$(start_demo_server) \
	image=$$(find $(DEMO_DIR)/data/test -name '*.jpg' | sort | head -1); \
	echo "-- serving now:"; \
	$(PY) -m clients status --server=http://localhost:$(DEMO_REST_PORT) --model=fashion; \
	echo "-- exporting the next version while the server runs (keeping the newest 2)"; \
	$(PY) -m export --model_dir=$(DEMO_DIR)/model --export_base=$(DEMO_DIR)/models/fashion \
	  --keep_versions=2 || exit 1; \
	newest=$$(ls $(DEMO_DIR)/models/fashion | grep -E '^[0-9]+$$' | sort -n | tail -1); \
	for i in $$(seq 120); do \
	  $(PY) -m clients status --server=http://localhost:$(DEMO_REST_PORT) --model=fashion \
	    --version=$$newest 2>/dev/null | grep -q AVAILABLE && break; \
	  sleep 1; \
	done; \
	echo "-- serving after the export (no restart):"; \
	$(PY) -m clients status --server=http://localhost:$(DEMO_REST_PORT) --model=fashion; \
	$(PY) -m clients predict --server=grpc://localhost:$(DEMO_GRPC_PORT) --model=fashion \
	  --version=$$newest --top_k=2 --progress=off $$image

test: venv
	$(PY) -m pytest

# Every Python file in the repository (ruff.toml; .venv and what .gitignore lists are skipped).
lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
