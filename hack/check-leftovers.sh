#!/usr/bin/env bash
# Fails when a test run left one of its processes running: a control-plane process started from
# our cache (etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok, kubelet), a real
# node's containerd or shim, or an operator of ours; and when a real node's bridge is still there.
#
# Only the test run's own processes count: tests/conftest.py puts a run id into the environment
# (NECROCODE_TEST_RUN, which `make test` sets and passes here too), every process the run starts
# inherits it, and a process is the run's when its /proc/<pid>/environ carries that id. Without
# NECROCODE_TEST_RUN, a process of any test run counts. A cluster started with `make cluster-up`,
# an operator from `make run`, or anything else outside a test run carries no id and is ignored.
set -uo pipefail
cache=${NECROCODE_CACHE:-$HOME/.cache/necrocode}
run=${NECROCODE_TEST_RUN:-}
ours() {  # is process $1 one of the test run's?
  local env
  env=$(tr '\0' '\n' <"/proc/$1/environ" 2>/dev/null) || return 1
  if [[ -n $run ]]; then
    grep -qxF "NECROCODE_TEST_RUN=$run" <<<"$env"
  else
    grep -q '^NECROCODE_TEST_RUN=' <<<"$env"
  fi
}
left=()
for pid in $(pgrep -f "$cache/bin/(etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kwok|kubelet)" || true) \
           $(pgrep -f "containerd.*necrocode|necrocode-realnode" || true) \
           $(pgrep -f "necrocode-operator|necrocode.main" || true); do
  [[ $pid == "$$" ]] && continue
  ours "$pid" || continue
  left+=("$pid: $(tr '\0' ' ' </proc/$pid/cmdline 2>/dev/null | cut -c1-120)")
done
# The bridge has one fixed name: it is a leftover unless `make cluster-up`'s real node holds it.
if [[ ! -f $cache/cluster-realnode/state.json ]] && [[ -e /sys/class/net/ncnode0 ]]; then
  left+=("interface ncnode0 of a real node (python3 -m hack.realnode down)")
fi
if ((${#left[@]})); then
  echo "leftover processes after the test run${run:+ $run}:" >&2
  printf '  %s\n' "${left[@]}" >&2
  exit 1
fi
echo "leftover check: no control-plane or operator process of the test run${run:+ $run} left behind"
