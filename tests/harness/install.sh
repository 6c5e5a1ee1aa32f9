#!/usr/bin/env bash
# Installs and builds, once, everything the tests and the demo run against:
#   - Debian packages (Go, etcd, Postgres, openssl, ...)
#   - kube-apiserver, kube-controller-manager, kubectl, kubelet and kube-scheduler v1.20.2,
#     built from Debian's `kubernetes` source package (no registry ships these binaries)
#   - a node's runtime from Debian (containerd, runc, the CNI plugins) and its images, built
#     here from Debian's files (node/images.py: pause, busybox httpd, pg_dump)
#   - kube-router's firewall (enforces NetworkPolicy on the node's bridge), built from the source
#     committed in vendor/ (no reachable registry ships it), and ipset, which it drives
#   - moto (AWS API emulator) in a virtualenv
#   - helm-python-sdk (real Helm, for the chart checks) in a virtualenv
#   - localstripe (a fake Stripe) and the official `stripe` Python SDK in a virtualenv
#   - cargo-fuzz (the fuzz smoke runs of make test), built from crates.io
#   - schemathesis (OpenAPI property tests of the served document) in a virtualenv
#   - Prometheus and promtool (Debian's `prometheus`): the chart's alert rules and dashboard are
#     checked by promtool and against a real Prometheus scraping the real binaries
# A second run finds everything cached and returns in seconds.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

apt_packages=(golang-go etcd-server etcd-client make rsync openssl curl
  golang-github-modern-go-reflect2-dev golang-github-json-iterator-go-dev
  postgresql-15 python3-venv procps prometheus
  containerd runc containernetworking-plugins busybox-static iproute2 gcc libc6-dev
  wrk ipset iptables xz-utils)

missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

k8s_binaries=(kube-apiserver kube-controller-manager kubectl kubelet kube-scheduler)
need_source=0
for what in "${k8s_binaries[@]}"; do [ -x "$K8S_BIN/$what" ] || need_source=1; done

if [ "$need_source" = 1 ] && [ ! -f /etc/apt/sources.list.d/stackplane-src.sources ]; then
  # deb-src stanzas for the mirror this machine already uses.
  [ -f /etc/apt/sources.list.d/debian.sources ] || die "no /etc/apt/sources.list.d/debian.sources to derive a deb-src entry from"
  log "adding deb-src entries derived from debian.sources"
  sed -e 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
    | $SUDO tee /etc/apt/sources.list.d/stackplane-src.sources >/dev/null
  missing+=("__update__")
fi

if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  mkdir -p "$STACKPLANE_CACHE"
  apt_log="$STACKPLANE_CACHE/apt.log"
  $SUDO apt-get update -qq >"$apt_log" 2>&1 || { tail -n 20 "$apt_log" >&2; die "apt-get update failed (log: $apt_log)"; }
  pkgs=()
  for p in "${missing[@]}"; do [ "$p" = "__update__" ] || pkgs+=("$p"); done
  if [ "${#pkgs[@]}" -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends --no-upgrade \
      -o Dpkg::Use-Pty=0 "${pkgs[@]}" >>"$apt_log" 2>&1 \
      || { tail -n 30 "$apt_log" >&2; die "apt-get install failed (log: $apt_log)"; }
  fi
fi

if [ "$need_source" = 1 ]; then
  build="$STACKPLANE_CACHE/build"
  mkdir -p "$build" "$K8S_BIN"
  cd "$build"
  if ! ls kubernetes_*.orig.tar.gz >/dev/null 2>&1; then
    log "downloading Debian's kubernetes source package"
    apt-get source --download-only kubernetes >"$build/apt-source.log" 2>&1 \
      || { tail -n 20 "$build/apt-source.log" >&2; die "apt-get source kubernetes failed"; }
  fi
  tarball="$(ls kubernetes_*.orig.tar.gz | head -n1)"
  src="$build/src"
  if [ ! -f "$src/Makefile" ]; then
    rm -rf "$src" && mkdir -p "$src"
    log "unpacking $tarball"
    tar -xzf "$tarball" -C "$src" --strip-components=1
  fi
  # Go >= 1.18 crashes the vendored reflect2 v1.0.1 (SIGSEGV on the first custom-resource
  # request). Debian ships fixed copies of reflect2 and json-iterator: use those.
  for pkg in github.com/modern-go/reflect2 github.com/json-iterator/go; do
    fixed="/usr/share/gocode/src/$pkg"
    [ -d "$fixed" ] || die "missing $fixed (package golang-github-*-dev)"
    find "$src/vendor/$pkg" -maxdepth 1 -name '*.go' ! -name '*_test.go' -delete
    find "$fixed" -maxdepth 1 -name '*.go' ! -name '*_test.go' -exec cp {} "$src/vendor/$pkg/" \;
  done
  cd "$src"
  for what in "${k8s_binaries[@]}"; do
    if [ ! -x "$K8S_BIN/$what" ]; then
      log "building $what $K8S_VERSION (minutes, once)"
      CGO_ENABLED=0 make WHAT="cmd/$what" >"$build/make-$what.log" 2>&1 \
        || { tail -n 40 "$build/make-$what.log" >&2; die "building $what failed (log: $build/make-$what.log)"; }
      cp "_output/bin/$what" "$K8S_BIN/$what.tmp" && mv "$K8S_BIN/$what.tmp" "$K8S_BIN/$what"
    fi
  done
  # The build tree is 1.5 GB; the binaries are all we keep.
  cd "$STACKPLANE_CACHE" && rm -rf "$build/src"
fi

# kube-router (firewall only) from the committed source, once per archive. One core and nice:
# the machines building it are shared.
kube_router="$(kube_router_bin)"
if [ ! -x "$kube_router" ]; then
  build="$STACKPLANE_CACHE/build-kube-router"
  rm -rf "$build" && mkdir -p "$build/src"
  log "building kube-router from $(basename "$KUBE_ROUTER_ARCHIVE") (minutes, once)"
  tar -xJf "$KUBE_ROUTER_ARCHIVE" -C "$build/src" --strip-components=1
  # The same Go >= 1.18 crash of the vendored reflect2 as in the kubernetes tree above.
  for pkg in github.com/modern-go/reflect2 github.com/json-iterator/go; do
    fixed="/usr/share/gocode/src/$pkg"
    [ -d "$fixed" ] || die "missing $fixed (package golang-github-*-dev)"
    find "$build/src/vendor/$pkg" -maxdepth 1 -name '*.go' ! -name '*_test.go' -delete
    find "$fixed" -maxdepth 1 -name '*.go' ! -name '*_test.go' -exec cp {} "$build/src/vendor/$pkg/" \;
  done
  (cd "$build/src" && CGO_ENABLED=0 GOFLAGS=-mod=vendor GOCACHE="$build/gocache" \
    nice -n 19 go build -p 1 -o "$build/kube-router" ./cmd/kube-router) >"$build/build.log" 2>&1 \
    || { tail -n 40 "$build/build.log" >&2; die "building kube-router failed (log: $build/build.log)"; }
  mkdir -p "$(dirname "$kube_router")"
  cp "$build/kube-router" "$kube_router.tmp" && mv "$kube_router.tmp" "$kube_router"
  cd "$STACKPLANE_CACHE" && rm -rf "$build"
fi

# The node's images, rebuilt when their recipe changes.
images_recipe="$(cat "$here/node/images.py" "$here/node/pause.c" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$NODE_IMAGES/recipe" 2>/dev/null)" != "$images_recipe" ]; then
  log "building the node's images into $NODE_IMAGES"
  rm -rf "$NODE_IMAGES"
  python3 "$here/node/images.py" "$NODE_IMAGES" >/dev/null || die "building the node's images failed"
  echo "$images_recipe" >"$NODE_IMAGES/recipe"
fi

if [ ! -x "$MOTO_VENV/bin/moto_server" ]; then
  log "installing moto into $MOTO_VENV"
  python3 -m venv "$MOTO_VENV"
  "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check "moto[server]==5.2.*"
fi

if [ ! -x "$HELM_VENV/bin/python" ] || ! "$HELM_VENV/bin/python" -c 'import helm_python' 2>/dev/null; then
  # Real Helm (Helm 4's Go SDK as a native library) for the chart checks; no helm binary exists here.
  log "installing helm-python-sdk into $HELM_VENV"
  python3 -m venv "$HELM_VENV"
  "$HELM_VENV/bin/pip" install -q --disable-pip-version-check "helm-python-sdk==0.2.*"
fi

if [ ! -x "$STRIPE_VENV/bin/python" ] || ! "$STRIPE_VENV/bin/python" -c 'import localstripe, stripe' 2>/dev/null; then
  log "installing localstripe and the stripe SDK into $STRIPE_VENV"
  python3 -m venv "$STRIPE_VENV"
  "$STRIPE_VENV/bin/pip" install -q --disable-pip-version-check "localstripe==1.15.*" "stripe==16.*"
fi

if [ ! -x "$SCHEMATHESIS_VENV/bin/schemathesis" ]; then
  log "installing schemathesis into $SCHEMATHESIS_VENV"
  python3 -m venv "$SCHEMATHESIS_VENV"
  "$SCHEMATHESIS_VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==4.32.*"
fi

if [ ! -x "$CARGO_FUZZ_ROOT/bin/cargo-fuzz" ]; then
  log "installing cargo-fuzz into $CARGO_FUZZ_ROOT (minutes, once)"
  cargo install -q --locked --root "$CARGO_FUZZ_ROOT" "cargo-fuzz@0.13.2"
fi

[ -x "$PROMTOOL" ] && [ -x "$PROMETHEUS" ] || die "$PROMTOOL or $PROMETHEUS missing after installing Debian's prometheus package"

log "ready: $kube_router, $PROMETHEUS, $PROMTOOL, $K8S_BIN, $MOTO_VENV, $HELM_VENV, $STRIPE_VENV, $SCHEMATHESIS_VENV, $CARGO_FUZZ_ROOT"
