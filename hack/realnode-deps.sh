#!/usr/bin/env bash
# System packages of the real node (hack/realnode.py), opt-in (not part of hack/system-deps.sh):
# containerd 1.6, runc 1.1 and the CNI plugins 1.1 from Debian (containernetworking-plugins pulls
# in iptables; the node's configuration adds no rule), and busybox-static (the reference runner
# image, examples/runner, is built from it by hack/ociimage.py), and debootstrap (the
# operator image's Debian rootfs, hack/build_image.py; it needs nothing else). Installs what is
# missing with apt-get when run as root, without starting any service (the node runs its own
# containerd with its own root, state and socket); otherwise says what to install.
#
#   hack/realnode-deps.sh          install what is missing
#   hack/realnode-deps.sh --check  only say what is missing (exit 1 if anything is)
set -euo pipefail
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v ctr >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local && -x /usr/lib/cni/loopback ]] || need+=(containernetworking-plugins)
# a static busybox (ldd refuses it): it runs in an image with nothing else in it
{ [[ -x /bin/busybox ]] && ! ldd /bin/busybox >/dev/null 2>&1; } || need+=(busybox-static)
command -v debootstrap >/dev/null || [[ -x /usr/sbin/debootstrap ]] || need+=(debootstrap)
mapfile -t need < <(printf '%s\n' "${need[@]}" | awk 'NF && !seen[$0]++')
((${#need[@]})) || exit 0
if [[ ${1:-} == --check ]]; then
  echo "missing system packages for the real node: ${need[*]}" >&2
  exit 1
fi
if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null; then
  echo "missing system packages for the real node: ${need[*]} (install them, e.g. apt-get install ${need[*]})" >&2
  exit 1
fi
echo "installing ${need[*]} with apt-get (services are not started)" >&2
export DEBIAN_FRONTEND=noninteractive
# Debian's containerd package would start the system containerd where a service manager runs;
# the real node does not use it. A policy-rc.d that refuses service starts, only for this install.
policy=/usr/sbin/policy-rc.d
added_policy=0
if [[ ! -e $policy ]]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 755 "$policy" && added_policy=1
fi
trap '[[ $added_policy == 1 ]] && rm -f "$policy"' EXIT
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
