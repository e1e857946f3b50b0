# necrocode-cancel developer commands. `make help` lists them.
SHELL := /bin/bash
PY := .venv/bin/python
CACHE ?= $(HOME)/.cache/necrocode
CLUSTER_DIR ?= $(CACHE)/cluster
export NECROCODE_CACHE := $(CACHE)
# make test's pytest-xdist workers, each with a control plane and an operator of its own (the
# tests wait far more than they compute: one worker keeps the 2 cores a quarter busy). 0: serial.
# Serial always against $$KUBECONFIG, whose one cluster the workers would share.
TEST_WORKERS ?= 2
TEST_PARALLEL = $(if $(KUBECONFIG),,$(if $(filter 0 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder))

.PHONY: help system-deps venv tools chart-sync lock kind-check kind-e2e kind-down cluster-up cluster-down cluster-status test unit lint crds crds-apply demo run clean bench bench-scale soak dist

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

venv: ## create/update .venv from pyproject.toml (idempotent)
	@hack/venv.sh

tools: ## build etcd, kube-apiserver & co, kwok, helm, kubeconform (and, as root, the real node's kubelet) into $(CACHE)/bin (cached)
	@hack/build-tools.sh >/dev/null
	@if [ "$$(id -u)" = 0 ]; then hack/build-tools.sh realnode >/dev/null; fi

cluster-up: venv tools ## start the local control plane, and a real node when this host can run one (kubeconfig: $(CLUSTER_DIR)/kubeconfig)
	@$(PY) -m hack.localcluster up --dir $(CLUSTER_DIR) >/dev/null
	@if $(PY) -m hack.realnode check >/dev/null 2>&1; then \
	  $(PY) -m hack.realnode up --cluster-dir $(CLUSTER_DIR) --state-dir $(CLUSTER_DIR)-realnode >/dev/null && \
	  echo "# real node necrocode-real-0 joined ($(PY) -m hack.realnode down --state-dir $(CLUSTER_DIR)-realnode)"; \
	else echo "# no real node: $$($(PY) -m hack.realnode check 2>&1 | tail -n 1)"; fi
	@echo "export KUBECONFIG=$(CLUSTER_DIR)/kubeconfig"

cluster-down: ## stop the real node (restoring the host) and the local control plane
	@if [ -d $(CLUSTER_DIR)-realnode ]; then $(PY) -m hack.realnode down --state-dir $(CLUSTER_DIR)-realnode; fi
	@$(PY) -m hack.localcluster down --dir $(CLUSTER_DIR)

cluster-status: ## is the local control plane running?
	@$(PY) -m hack.localcluster status --dir $(CLUSTER_DIR)

lint: venv ## ruff, mypy --strict, import-linter layer rules, CRDs up to date
	@.venv/bin/ruff check operator tests hack benchmarks
	@.venv/bin/mypy
	@# silent: the hack/ and tests/ modules it imports are not --strict; a cache of its own, since
	@# one shared with the run above is rewritten by each for its options (15 s each, warm: under 1 s)
	@.venv/bin/mypy -p benchmarks --follow-imports=silent --cache-dir .mypy_cache/benchmarks
	@.venv/bin/lint-imports --no-cache
	@$(PY) -m hack.gen_crds --check

crds: venv ## regenerate crds/ from hack/gen_crds.py
	@$(PY) -m hack.gen_crds

# Helm installs crds/ once and never upgrades them: before `helm upgrade` to a chart with newer
# CRDs, apply them (server-side; --force-conflicts takes over the fields Helm's create recorded).
KUBECTL ?= $(shell command -v kubectl 2>/dev/null || echo $(CACHE)/bin/kubectl)
crds-apply: ## apply crds/ to the cluster of $$KUBECONFIG (server-side): the CRD upgrade `helm upgrade` does not do
	@$(KUBECTL) apply --server-side --force-conflicts --field-manager=necrocode-crds -f crds/

unit: venv ## unit tests only (no server)
	@$(PY) -m pytest -m "not cluster" -q

# NECROCODE_TEST_RUN: the run id every process the tests start inherits; the leftover check
# reports only those (not a `make cluster-up` cluster running next to the tests).
test: system-deps venv tools lint ## the whole suite: lint, unit and real-control-plane tests, leftover check
	@export NECROCODE_TEST_RUN=make-test-$$$$-$$(date +%s); \
	  $(PY) -m pytest -q $(TEST_PARALLEL) && hack/check-leftovers.sh

demo: venv tools ## the main job: a local control plane, the operator, a job, its cancellation, live
	@$(PY) -m hack.demo

run: venv ## run the operator against $$KUBECONFIG (text logs)
	@.venv/bin/necrocode-operator --log-format text

clean: cluster-down ## stop the cluster and remove .venv
	rm -rf .venv

system-deps: ## openssl and promtool, and as root the real node's containerd, runc, CNI plugins, busybox (apt-get, when missing)
	@hack/system-deps.sh
	@if [ "$$(id -u)" = 0 ]; then hack/realnode-deps.sh; fi

chart-sync: ## copy crds/, the admission policies, user roles, alert rules and dashboard into the chart
	@cp crds/*.yaml charts/necrocode-cancel/crds/
	@cp deploy/admission-policy.yaml deploy/requester-policy.yaml deploy/user-roles.yaml deploy/prometheus/necrocode-alerts.yaml deploy/grafana/necrocode-dashboard.json charts/necrocode-cancel/files/

lock: venv ## regenerate requirements.lock (runtime dependencies, fully resolved)
	@$(PY) -m hack.lock

# make dist: what an install needs, into $(DIST)/. The wheel and sdist are built with the dev venv's
# pinned setuptools (--no-isolation: offline, the same build every time); the wheel is built from
# the sdist, so a file the sdist lacks fails here. Install: README.md, "Install in your cluster".
DIST ?= dist
dist: venv tools ## the wheel and sdist (python -m build) and the chart archive (helm package) into $(DIST)/
	@mkdir -p $(DIST) && rm -f $(DIST)/necrocode_cancel-* $(DIST)/necrocode-cancel-*.tgz
	@$(PY) -m build --no-isolation --outdir $(DIST) . >$(DIST)/build.log 2>&1 || { cat $(DIST)/build.log >&2; exit 1; }
	@rm -f $(DIST)/build.log
	@$(CACHE)/bin/helm package charts/necrocode-cancel --destination $(DIST) >/dev/null
	@ls -1 $(DIST)/necrocode_cancel-* $(DIST)/necrocode-cancel-*.tgz

# make kind-e2e: the real-node tests (the same that run on hack/realnode.py's node here) against a
# kind cluster: hack/kind-config.yaml labels one worker necrocode.io/node-kind=real; the operator
# image (Dockerfile) and the runner image (examples/runner/Dockerfile) are built by docker and
# loaded into kind. See docs/local-control-plane.md, "kind".
DOCKER ?= docker
KIND ?= kind
IMAGE ?= necrocode-cancel:dev
RUNNER_IMAGE ?= necrocode.local/runner:v1
KIND_CLUSTER ?= necrocode
KIND_CONFIG ?= hack/kind-config.yaml
# Kubernetes >= 1.36 (MutatingAdmissionPolicy v1); this one is in kind v0.33.0's release notes
KIND_NODE_IMAGE ?= kindest/node:v1.36.4@sha256:099e049362a1526b2db71494e1947aae99bd16290d7c895f2b7ea312e3cbfaed
KIND_KUBECONFIG ?= $(CACHE)/kind-$(KIND_CLUSTER).kubeconfig
KIND_PYTEST_ARGS ?= -q -rs

kind-check: ## (kind-e2e's first step) fail early, saying what is missing, without Docker, kind, kubectl or helm
	@missing=""; \
	for t in $(DOCKER) $(KIND) kubectl helm; do \
	  command -v $$t >/dev/null 2>&1 || [ -x "$(CACHE)/bin/$$t" ] || missing="$$missing $$t"; \
	done; \
	if [ -n "$$missing" ]; then echo "kind-e2e needs Docker, kind, kubectl and helm; not found:$$missing" >&2; exit 2; fi; \
	if ! $(DOCKER) info >/dev/null 2>&1; then \
	  echo "kind-e2e needs a running Docker engine: '$(DOCKER) info' failed (the local real node needs none: make test)" >&2; exit 2; fi

kind-e2e: kind-check venv ## (needs Docker, kind, kubectl, helm) build both images, load them into a kind cluster, run the real-node tests there
	$(DOCKER) build -t $(IMAGE) .
	$(DOCKER) build -t $(RUNNER_IMAGE) examples/runner
	$(KIND) get clusters 2>/dev/null | grep -qx $(KIND_CLUSTER) || \
	  $(KIND) create cluster --name $(KIND_CLUSTER) --config $(KIND_CONFIG) --image $(KIND_NODE_IMAGE) --wait 180s
	mkdir -p $(dir $(KIND_KUBECONFIG)) && $(KIND) get kubeconfig --name $(KIND_CLUSTER) > $(KIND_KUBECONFIG)
	$(KIND) load docker-image $(IMAGE) $(RUNNER_IMAGE) --name $(KIND_CLUSTER)
	KUBECONFIG=$(KIND_KUBECONFIG) NECROCODE_TEST_IMAGE=$(IMAGE) NECROCODE_TEST_RUNNER_IMAGE=$(RUNNER_IMAGE) \
	  NECROCODE_TEST_REQUIRE_REALNODE=1 $(PY) -m pytest -m "realnode and not localnode" $(KIND_PYTEST_ARGS) \
	  tests/cluster/test_realnode.py tests/cluster/test_realnode_helm.py

kind-down: ## delete make kind-e2e's kind cluster
	$(KIND) delete cluster --name $(KIND_CLUSTER)
	rm -f $(KIND_KUBECONFIG)

bench: venv tools ## benchmarks (not part of the tests; installs the bench extras): make bench [BENCH_ARGS="--scenario sizes --sizes 100,1000"]
	@hack/venv.sh bench
	$(PY) -m benchmarks $(BENCH_ARGS)

bench-scale: venv tools ## issue 19's benchmarks: many at once, the good neighbour (ours under --budgets), the leak check: make bench-scale [BENCH_ARGS=...]
	@hack/venv.sh bench
	$(PY) -m benchmarks --scenario many,neighbour,leak $(BENCH_ARGS)

soak: venv tools ## soak: 500 cancellations under random faults, each checked: make soak [SOAK_ARGS="--cancellations 40 --seed 7"]
	$(PY) -m benchmarks.soak $(SOAK_ARGS)
