#!/usr/bin/env bash
# Fails when a control-plane process started from our cache (etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler, kwok, kubelet), a real node's containerd or shim, or
# an operator of ours is still running, except one started on purpose with `make cluster-up`;
# and when a real node's bridge or cgroups are still there.
set -uo pipefail
cache=${NECROCODE_CACHE:-$HOME/.cache/necrocode}
keep=""
if [[ -f $cache/cluster/pids ]]; then
  keep=$(python3 -c "import json,sys; print(' '.join(str(p) for p in json.load(open(sys.argv[1])).values()))" "$cache/cluster/pids" 2>/dev/null)
fi
left=()
if [[ -f $cache/cluster-realnode/state.json ]]; then
  keep+=" $(pgrep -f "necrocode/cluster-realnode" | tr '\n' ' ')"
fi
for pid in $(pgrep -f "$cache/bin/(etcd|kube-apiserver|kube-controller-manager|kube-scheduler|kwok|kubelet)" || true) \
           $(pgrep -f "containerd.*necrocode|necrocode-realnode" || true) \
           $(pgrep -f "necrocode-operator|necrocode.main" || true); do
  [[ " $keep " == *" $pid "* ]] && continue
  [[ $pid == "$$" ]] && continue
  left+=("$pid: $(tr '\0' ' ' </proc/$pid/cmdline 2>/dev/null | cut -c1-120)")
done
if [[ ! -f $cache/cluster-realnode/state.json ]] && [[ -e /sys/class/net/ncnode0 ]]; then
  left+=("interface ncnode0 of a real node (python3 hack/realnode.py down)")
fi
if ((${#left[@]})); then
  echo "leftover processes after the test run:" >&2
  printf '  %s\n' "${left[@]}" >&2
  exit 1
fi
echo "leftover check: no control-plane or operator process left behind"
