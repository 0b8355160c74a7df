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

# The node (e2e/cluster/node-up): its pods live on their own CNI bridge; its IP is the rig bridge's host address.
NODE_NAME=portcullis-node
NODE_BRIDGE=pcnode0
POD_CIDR=10.233.0.0/24
POD_GATEWAY=10.233.0.1
PAUSE_IMAGE=portcullis.local/pause:3.9   # built from Kubernetes' pause.c by deploy/image/build.py
KUBELET_PORT="${PORTCULLIS_KUBELET_PORT:-10250}"   # kubelet healthz, kube-proxy metrics/healthz: the next three
CNI_BIN_DIR=/usr/lib/cni                # Debian's containernetworking-plugins
# Host settings the node changes (node-up saves them, node-down restores them).
NODE_SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables net.ipv4.conf.all.route_localnet)

_k8s_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/k8s"
K8S_VERSION="$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$_k8s_dir/go.mod")"
# The version the binaries report (the node's kubeletVersion, /version): a module build has no git to stamp it.
_minor="${K8S_VERSION#v1.}"; _minor="${_minor%%.*}"
K8S_LDFLAGS="-s -w"
for _pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  K8S_LDFLAGS+=" -X $_pkg.gitVersion=$K8S_VERSION -X $_pkg.gitMajor=1 -X $_pkg.gitMinor=$_minor -X $_pkg.gitTreeState=clean"
done
# The cache key covers go.mod, go.sum and the flags, so a change of pins rebuilds instead of reusing stale binaries.
_pins="$( (cat "$_k8s_dir/go.mod" "$_k8s_dir/go.sum" "$_k8s_dir/tools.go"; echo "$K8S_LDFLAGS") | sha256sum | cut -c1-12)"
BIN_DIR="$CACHE_ROOT/k8s-$K8S_VERSION-$_pins"

# Built from the wrapper module: the control plane and the node (kubelet, kube-proxy, kube-scheduler).
K8S_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)
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

# ---------------------------------------------------------------- logging and processes
log() { echo "rig: $*" >&2; }

fail() {
  local component="$1"; shift
  echo "rig: FAILED: $*" >&2
  for f in "$STATE/logs/$component.log" "$STATE/logs/build.log"; do
    if [ -s "$f" ]; then
      echo "----- last 60 lines of $f -----" >&2
      tail -n 60 "$f" >&2
    fi
  done
  exit 1
}

start() {  # start NAME CMD...  (setsid: its own process group, so down can stop it and its children)
  local name="$1"; shift
  setsid "$@" >"$STATE/logs/$name.log" 2>&1 </dev/null 8>&- 9>&- &   # no lock fds: they would outlive us
  echo $! >"$STATE/$name.pid"
}

wait_for() {  # wait_for NAME SECONDS CMD...
  local name="$1" limit="$2"; shift 2
  local deadline=$((SECONDS + limit))
  while [ $SECONDS -lt $deadline ]; do
    running "$name" || fail "$name" "$name exited during start-up"
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.3
  done
  fail "$name" "$name not ready within ${limit}s"
}

# ---------------------------------------------------------------- PKI: certificates signed by the rig CA (up makes it)
cert() {  # cert NAME CN O SANS(ext line or empty) EKU
  local name="$1" cn="$2" org="$3" sans="$4" eku="$5" pki="$STATE/pki"
  [ -s "$pki/$name.crt" ] && return 0
  local subj="/CN=$cn"; [ -n "$org" ] && subj="/O=$org/CN=$cn"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$pki/$name.key" \
    -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$eku"
    [ -n "$sans" ] && echo "subjectAltName=$sans"
  } >"$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}

kubeconfig() {  # kubeconfig FILE USER
  local file="$1" user="$2" pki="$STATE/pki"
  cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: portcullis-e2e
  cluster:
    server: https://127.0.0.1:$APISERVER_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $user
  user:
    client-certificate: $pki/$user.crt
    client-key: $pki/$user.key
contexts:
- name: portcullis-e2e
  context: {cluster: portcullis-e2e, user: $user}
current-context: portcullis-e2e
EOF
  chmod 600 "$file"
}

