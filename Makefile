# necrocode-cancel developer commands. `make help` lists them.
SHELL := /bin/bash
PY := .venv/bin/python
CACHE ?= $(HOME)/.cache/necrocode
CLUSTER_DIR ?= $(CACHE)/cluster
export NECROCODE_CACHE := $(CACHE)

.PHONY: help system-deps venv tools chart-sync lock kind-e2e cluster-up cluster-down cluster-status test unit lint crds demo run clean bench soak

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

venv: ## create/update .venv from pyproject.toml (idempotent)
	@hack/venv.sh

tools: ## build etcd, kube-apiserver & co, kwok, helm, kubeconform (and, as root, the real node's kubelet) into $(CACHE)/bin (cached)
	@hack/build-tools.sh >/dev/null
	@if [ "$$(id -u)" = 0 ]; then hack/build-tools.sh realnode >/dev/null; fi

cluster-up: venv tools ## start the local control plane, and a real node when this host can run one (kubeconfig: $(CLUSTER_DIR)/kubeconfig)
	@$(PY) hack/localcluster.py up --dir $(CLUSTER_DIR) >/dev/null
	@if $(PY) hack/realnode.py check >/dev/null 2>&1; then \
	  $(PY) hack/realnode.py up --cluster-dir $(CLUSTER_DIR) --state-dir $(CLUSTER_DIR)-realnode >/dev/null && \
	  echo "# real node necrocode-real-0 joined (hack/realnode.py down --state-dir $(CLUSTER_DIR)-realnode)"; \
	else echo "# no real node: $$($(PY) hack/realnode.py check 2>&1 | tail -n 1)"; fi
	@echo "export KUBECONFIG=$(CLUSTER_DIR)/kubeconfig"

cluster-down: ## stop the real node (restoring the host) and the local control plane
	@if [ -d $(CLUSTER_DIR)-realnode ]; then $(PY) hack/realnode.py down --state-dir $(CLUSTER_DIR)-realnode; fi
	@$(PY) hack/localcluster.py down --dir $(CLUSTER_DIR)

cluster-status: ## is the local control plane running?
	@$(PY) hack/localcluster.py status --dir $(CLUSTER_DIR)

lint: venv ## ruff, mypy --strict, import-linter layer rules, CRDs up to date
	@.venv/bin/ruff check operator tests hack benchmarks
	@.venv/bin/mypy
	@.venv/bin/mypy benchmarks/run.py benchmarks/soak.py
	@.venv/bin/lint-imports --no-cache
	@$(PY) hack/gen_crds.py --check

crds: venv ## regenerate crds/ from hack/gen_crds.py
	@$(PY) hack/gen_crds.py

unit: venv ## unit tests only (no server)
	@$(PY) -m pytest -m "not cluster" -q

test: system-deps venv tools lint ## the whole suite: lint, unit and real-control-plane tests, leftover check
	@$(PY) -m pytest -q
	@hack/check-leftovers.sh

demo: venv tools ## the main job: a local control plane, the operator, a job, its cancellation, live
	@$(PY) hack/demo.py

run: venv ## run the operator against $$KUBECONFIG (text logs)
	@.venv/bin/necrocode-operator --log-format text

clean: cluster-down ## stop the cluster and remove .venv
	rm -rf .venv

system-deps: ## openssl and promtool, and as root the real node's containerd, runc, CNI plugins, busybox (apt-get, when missing)
	@hack/system-deps.sh
	@if [ "$$(id -u)" = 0 ]; then hack/realnode-deps.sh; fi

chart-sync: ## copy crds/, the admission policy, alert rules and dashboard into the chart
	@cp crds/*.yaml charts/necrocode-cancel/crds/
	@cp deploy/admission-policy.yaml deploy/prometheus/necrocode-alerts.yaml deploy/grafana/necrocode-dashboard.json charts/necrocode-cancel/files/

lock: venv ## regenerate requirements.lock (runtime dependencies, fully resolved)
	@$(PY) hack/lock.py

IMAGE ?= necrocode-cancel:dev
KIND_CLUSTER ?= necrocode
kind-e2e: ## (needs Docker and kind) build the image, load it into kind, install the chart, run the tests there
	docker build -t $(IMAGE) .
	kind get clusters | grep -qx $(KIND_CLUSTER) || kind create cluster --name $(KIND_CLUSTER)
	kind load docker-image $(IMAGE) --name $(KIND_CLUSTER)
	helm upgrade --install necrocode charts/necrocode-cancel -n necrocode --create-namespace \
	  --set image.repository=$(word 1,$(subst :, ,$(IMAGE))) --set image.tag=$(word 2,$(subst :, ,$(IMAGE))) \
	  --set image.pullPolicy=Never --wait
	KUBECONFIG=$$(mktemp) && kind get kubeconfig --name $(KIND_CLUSTER) > $$KUBECONFIG && \
	  KUBECONFIG=$$KUBECONFIG NECROCODE_TEST_EXTERNAL_OPERATOR=1 $(PY) -m pytest tests/cluster -q -k "not leftovers and not version and not metrics and not restart and not high_availability and not chart"

bench: venv tools ## benchmarks (not part of the tests): make bench [BENCH_ARGS="--sizes 100,1000"]
	$(PY) benchmarks/run.py $(BENCH_ARGS)

soak: venv tools ## soak: 500 cancellations under random faults, each checked: make soak [SOAK_ARGS="--cancellations 40 --seed 7"]
	$(PY) benchmarks/soak.py $(SOAK_ARGS)
