#!/usr/bin/env bash
# Build the local control plane (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl,
# etcd) and the tools (kwok, helm, kubeconform) from their published Go modules, at the versions
# pinned in hack/versions.env, into a cache outside the repository. A warm cache builds nothing.
#
#   hack/build-tools.sh            build what is missing, print the bin directory on the last line
#   hack/build-tools.sh realnode   opt-in, not part of the default build: the real node's kubelet
#                                  (same wrapper module and ldflags as kube-apiserver) and its
#                                  pause binary (static build of the module's build/pause/linux/pause.c)
#   NECROCODE_CACHE=/path ...      cache root (default ~/.cache/necrocode)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${NECROCODE_CACHE:-$HOME/.cache/necrocode}
bin=$cache/bin
work=$cache/build
mkdir -p "$bin" "$work"
export GOFLAGS="${GOFLAGS:-} -buildvcs=false"
export GOTOOLCHAIN=local

log() { printf '[build-tools %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
fail() { log "FAILED: $*"; exit 1; }

# step NAME BINARY CMD...: run one build step, naming the binary and step on failure.
step() {
  local what=$1 name=$2; shift 2
  log "$name: $what"
  local start=$SECONDS
  if ! "$@" >"$work/$name.log" 2>&1; then
    tail -n 40 "$work/$name.log" >&2
    fail "$name: step '$what' (full log: $work/$name.log)"
  fi
  log "$name: $what done in $((SECONDS - start))s"
}

have() { [[ -x "$bin/$1-$2" ]]; }

link() { ln -sfn "$1-$2" "$bin/$1"; }

# gen_wrapper DIR MODULE VERSION STAGING_PREFIX STAGING_VERSION:
# a go.mod that requires MODULE@VERSION and turns each of its local `=> ./...` replaces
# into the published module at STAGING_VERSION; the go and godebug lines are copied.
gen_wrapper() {
  local dir=$1 mod=$2 ver=$3 staging_ver=$4
  mkdir -p "$dir"
  local gomod
  gomod=$(cd "$dir" && go mod download -json "$mod@$ver" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  [[ -f "$gomod" ]] || return 1
  {
    echo "module necrocode.local/toolbuild"
    echo
    grep -E '^go [0-9]' "$gomod"
    grep -E '^godebug ' "$gomod" || true
    echo
    echo "require $mod $ver"
    echo
    echo "replace ("
    # lines like `k8s.io/api => ./staging/src/k8s.io/api` or `go.etcd.io/etcd/api/v3 => ../api`
    grep -E '^\s*[^ ]+ => \.{1,2}/' "$gomod" | awk -v v="$staging_ver" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } >"$dir/go.mod"
  echo "package main" >"$dir/doc.go"
}

# kube_ldflags VERSION: the version ldflags of every Kubernetes binary built here.
kube_ldflags() {
  local ver=$1 major minor ld=""
  major=$(echo "${ver#v}" | cut -d. -f1); minor=$(echo "${ver#v}" | cut -d. -f2)
  for p in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
    ld+=" -X $p.gitVersion=$ver -X $p.gitMajor=$major -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ld"
}

build_kubernetes() {
  local ver=$KUBERNETES_VERSION
  local need=()
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do
    have "$c" "$ver" || need+=("$c")
  done
  if ((${#need[@]})); then
    local dir=$work/kubernetes-$ver
    step "generate wrapper module" kubernetes gen_wrapper "$dir" k8s.io/kubernetes "$ver" "$KUBERNETES_STAGING_VERSION"
    local ld
    ld=$(kube_ldflags "$ver")
    local pkgs=()
    for c in "${need[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
    step "resolve modules" kubernetes bash -c "cd '$dir' && go list -mod=mod -deps ${pkgs[*]} >/dev/null"
    for c in "${need[@]}"; do
      step "go build" "$c" bash -c "cd '$dir' && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags '-s -w $ld' -o '$bin/$c-$ver.tmp' k8s.io/kubernetes/cmd/$c && mv '$bin/$c-$ver.tmp' '$bin/$c-$ver'"
    done
  fi
  for c in kube-apiserver kube-controller-manager kube-scheduler kubectl; do link "$c" "$ver"; done
}

# The real node (hack/realnode.py), opt-in: kubelet from the same wrapper module as
# kube-apiserver (so it reuses that module's build cache), and the pause binary, a static build
# of build/pause/linux/pause.c from the same module version (gcc, glibc's libc.a).
build_kubelet() {
  local ver=$KUBERNETES_VERSION
  if ! have kubelet "$ver"; then
    local dir=$work/kubernetes-$ver ld
    [[ -f $dir/go.mod ]] || step "generate wrapper module" kubernetes gen_wrapper "$dir" k8s.io/kubernetes "$ver" "$KUBERNETES_STAGING_VERSION"
    ld=$(kube_ldflags "$ver")
    step "go build" kubelet bash -c "cd '$dir' && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags '-s -w $ld' -o '$bin/kubelet-$ver.tmp' k8s.io/kubernetes/cmd/kubelet && mv '$bin/kubelet-$ver.tmp' '$bin/kubelet-$ver'"
  fi
  link kubelet "$ver"
}

build_pause() {
  local ver=$KUBERNETES_VERSION
  if ! have pause "$ver"; then
    local dir=$work/kubernetes-$ver src
    [[ -f $dir/go.mod ]] || step "generate wrapper module" kubernetes gen_wrapper "$dir" k8s.io/kubernetes "$ver" "$KUBERNETES_STAGING_VERSION"
    src=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$ver" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')/build/pause/linux/pause.c
    [[ -f $src ]] || fail "pause: $src not found"
    step "gcc -static pause.c" pause bash -c "gcc -Os -static -Wall -Werror -DVERSION=$ver-necrocode -o '$bin/pause-$ver.tmp' '$src' && strip '$bin/pause-$ver.tmp' && mv '$bin/pause-$ver.tmp' '$bin/pause-$ver'"
  fi
  link pause "$ver"
}

build_etcd() {
  local ver=$ETCD_VERSION
  if ! have etcd "$ver"; then
    local dir=$work/etcd-$ver
    step "generate wrapper module" etcd gen_wrapper "$dir" go.etcd.io/etcd/server/v3 "$ver" "$ver"
    step "go build" etcd bash -c "cd '$dir' && CGO_ENABLED=0 go build -mod=mod -trimpath -ldflags '-s -w' -o '$bin/etcd-$ver.tmp' go.etcd.io/etcd/server/v3 && mv '$bin/etcd-$ver.tmp' '$bin/etcd-$ver'"
  fi
  link etcd "$ver"
}

# go_install NAME PACKAGE VERSION: tools whose go.mod has no local replaces.
go_install() {
  local name=$1 pkg=$2 ver=$3
  if ! have "$name" "$ver"; then
    local gobin=$work/gobin-$name-$ver
    step "go install $pkg@$ver" "$name" env GOBIN="$gobin" CGO_ENABLED=0 go install -trimpath -ldflags '-s -w' "$pkg@$ver"
    mv "$gobin/$name" "$bin/$name-$ver"
  fi
  link "$name" "$ver"
}

only=${1:-all}
case $only in
  all|kubernetes) build_kubernetes ;;&
  all|etcd) build_etcd ;;&
  all|kwok) go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" ;;&
  all|helm) go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" ;;&
  all|kubeconform) go_install kubeconform github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_VERSION" ;;&
  realnode|kubelet) build_kubelet ;;&
  realnode|pause) build_pause ;;&
  *) ;;
esac
log "all tools ready in $bin"
echo "$bin"
