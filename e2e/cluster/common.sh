# Shared by e2e/cluster/up and e2e/cluster/down (sourced, not run). The names and addresses here are also
# known to e2e/netns.py: keep them in step.

STATE="${PORTCULLIS_E2E_STATE:-/tmp/portcullis-e2e}"
CACHE_ROOT="${PORTCULLIS_K8S_CACHE:-$HOME/.cache/portcullis}"
APISERVER_PORT="${PORTCULLIS_APISERVER_PORT:-16443}"
ETCD_PORT="${PORTCULLIS_ETCD_PORT:-12379}"

BRIDGE=pcbr0            # host side of every netns "pod"
HOST_ADDR=10.231.0.1    # on the bridge; pods reach the host (and the apiserver) here
NETNS_PREFIX=pcx-       # pods: netns pcx-<octet>, host-side veth pcv<octet>
VETH_PREFIX=pcv
SERVICE_CIDR=10.232.0.0/16
SERVICE_IP=10.232.0.1   # ClusterIP of default/kubernetes, in the apiserver certificate

_k8s_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/k8s"
K8S_VERSION="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$_k8s_dir/go.mod")"
# The cache key covers go.mod and go.sum, so a change of pins rebuilds instead of reusing stale binaries.
_pins="$(cat "$_k8s_dir/go.mod" "$_k8s_dir/go.sum" "$_k8s_dir/tools.go" | sha256sum | cut -c1-12)"
BIN_DIR="$CACHE_ROOT/k8s-$K8S_VERSION-$_pins"

COMPONENTS=(kube-controller-manager kube-apiserver etcd)   # stop order

alive() {  # alive NAME: the recorded pid runs and is ours (pid reuse would not carry our state dir)
  local pidfile="$STATE/$1.pid" pid cmdline
  [ -s "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ -r "/proc/$pid/cmdline" ] || return 1
  cmdline="$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)" || return 1
  [[ "$cmdline" == *"$STATE"* ]]
}

running() {  # running NAME: the recorded pid exists and is not a zombie (true between fork and exec too)
  local pid state
  pid="$(cat "$STATE/$1.pid" 2>/dev/null)" || return 1
  state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

stop_components() {
  local name pid i
  for name in "${COMPONENTS[@]}"; do
    if alive "$name"; then
      pid="$(cat "$STATE/$name.pid")"
      kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
      for i in $(seq 1 15); do  # 3 s: etcd data is thrown away, a clean exit buys nothing
        [ -d "/proc/$pid" ] || break
        sleep 0.2
      done
      if [ -d "/proc/$pid" ]; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$STATE/$name.pid"
  done
}
