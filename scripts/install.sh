#!/bin/sh
# Install edgemesh as a systemd service. Idempotent: running it again upgrades the binary and the unit and
# never overwrites your config or catalog.
#
#   sudo scripts/install.sh                          # binary from dist/edgemesh (npm run build); mode detected
#   sudo scripts/install.sh --mode standalone        # no Kubernetes: services from /etc/edgemesh/catalog.yaml
#   sudo scripts/install.sh --mode edge              # KubeEdge: the API through edgecore's metaServer
#   sudo scripts/install.sh --mode manual --kubeconfig /etc/edgemesh/kubeconfig
#   sudo scripts/install.sh --binary ./edgemesh-linux-arm64 --arch arm64   # stage a board's image (with DESTDIR)
#   scripts/install.sh --dry-run                     # print every file and command; change nothing
#   sudo scripts/install.sh --uninstall [--purge]    # removes binary and unit (--purge: config and state too)
#
# Modes: without --mode, "edge" when KubeEdge is here (an edgecore binary, or its metaServer answering on
# 127.0.0.1:10550), else "standalone". DESTDIR=/some/root installs into a staging root; systemctl is then not
# called. --arch (amd64 or arm64) is checked against the binary; a binary for another architecture is staged as
# is (the config is then written by this checkout's own CLI).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=${DESTDIR:-}
bin_src="$here/../dist/edgemesh"
action=install
purge=no
mode=auto
kubeconfig=
arch=
dry=no

need_value() { [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#-}" = "$2" ] || { echo "install.sh: $1 needs a value (try --help)" >&2; exit 2; }; }
while [ $# -gt 0 ]; do
  case "$1" in
    --binary|--mode|--kubeconfig|--arch) need_value "$@"; opt=$1; val=$2; shift 2 ;;
    --binary=*|--mode=*|--kubeconfig=*|--arch=*) opt=${1%%=*}; val=${1#*=}; shift ;;
    --uninstall) action=uninstall; shift; continue ;;
    --purge) purge=yes; shift; continue ;;
    --dry-run) dry=yes; shift; continue ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
  case "$opt" in
    --binary) bin_src=$val ;;
    --mode) mode=$val ;;
    --kubeconfig) kubeconfig=$val ;;
    --arch) arch=$val ;;
  esac
done
case "$mode" in auto|edge|standalone|manual) ;; *) echo "install.sh: --mode must be edge, standalone or manual (got $mode)" >&2; exit 2 ;; esac
case "$arch" in ''|amd64|arm64) ;; *) echo "install.sh: --arch must be amd64 or arm64 (got $arch)" >&2; exit 2 ;; esac
if [ "$mode" = manual ] && [ -z "$kubeconfig" ]; then echo "install.sh: --mode manual needs --kubeconfig FILE" >&2; exit 2; fi

bin_dst="$root/usr/local/bin/edgemesh"
unit_dst="$root/etc/systemd/system/edgemesh.service"
conf_dir="$root/etc/edgemesh"
conf="$conf_dir/config/edgemesh-agent.yaml"
catalog="$conf_dir/catalog.yaml"
env_file="$root/etc/default/edgemesh"

did=wrote
[ "$dry" = yes ] && did="would write"
# Every change goes through these two: --dry-run prints instead.
run() { if [ "$dry" = yes ]; then echo "+ $*"; else "$@"; fi; }
# write FILE MODE: the file's content from stdin.
write() {
  if [ "$dry" = yes ]; then echo "--- would write $1 (mode $2):"; cat; echo "---"; return; fi
  cat > "$1.new" && chmod "$2" "$1.new" && mv -f "$1.new" "$1"
}

# Only talk to systemd when installing into the live system and systemd is running.
systemd_live() { [ -z "$root" ] && [ "$dry" = no ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

if [ "$action" = uninstall ]; then
  if systemd_live; then systemctl disable --now edgemesh.service 2>/dev/null || true; fi
  run rm -f "$bin_dst" "$unit_dst"
  if systemd_live; then systemctl daemon-reload; fi
  if [ "$purge" = yes ]; then
    run rm -rf "$conf_dir" "$root/var/lib/edgemesh" "$env_file"
    echo "edgemesh removed, with its config and state"
  else
    echo "edgemesh removed; config kept in $conf_dir and state in $root/var/lib/edgemesh (--purge removes them)"
  fi
  exit 0
fi

if [ ! -f "$bin_src" ]; then
  echo "install.sh: no binary at $bin_src; run 'npm run build' first or pass --binary FILE" >&2
  exit 1
fi
# The binary's architecture from its ELF header (e_machine: 0x3e x86-64, 0xb7 aarch64).
machine=$(od -An -tx1 -j18 -N2 "$bin_src" 2>/dev/null | tr -d ' \n')
case "$machine" in 3e00) bin_arch=amd64 ;; b700) bin_arch=arm64 ;; *) echo "install.sh: $bin_src is not an x86-64 or arm64 Linux binary" >&2; exit 1 ;; esac
if [ -n "$arch" ] && [ "$arch" != "$bin_arch" ]; then echo "install.sh: --arch $arch, but $bin_src is built for $bin_arch" >&2; exit 1; fi
case "$(uname -m)" in x86_64) host_arch=amd64 ;; aarch64|arm64) host_arch=arm64 ;; *) host_arch=other ;; esac
if [ "$bin_arch" = "$host_arch" ]; then
  if ! "$bin_src" version >/dev/null 2>&1; then echo "install.sh: $bin_src does not run on this machine" >&2; exit 1; fi
  cli="$bin_src"
elif [ -n "$root" ] || [ "$dry" = yes ]; then
  # Staging another architecture's image: this checkout writes the config.
  if [ -x "$here/../node_modules/.bin/bun" ]; then cli="$here/../node_modules/.bin/bun $here/../src/cli/main.ts"
  else echo "install.sh: to stage a $bin_arch binary on $host_arch, run 'npm ci' in this checkout first (its CLI writes the config)" >&2; exit 1; fi
else
  echo "install.sh: $bin_src is built for $bin_arch and this machine is $host_arch; stage it with DESTDIR=/path/to/root and --arch $bin_arch" >&2
  exit 1
fi

if [ "$mode" = auto ]; then
  if command -v edgecore >/dev/null 2>&1 || [ -x /usr/local/bin/edgecore ] || { command -v curl >/dev/null 2>&1 && curl -s -o /dev/null --max-time 1 http://127.0.0.1:10550/version; }; then
    mode=edge; why="KubeEdge found (edgecore, or its metaServer on 127.0.0.1:10550)"
  else
    mode=standalone; why="no KubeEdge here (no edgecore, no metaServer on 127.0.0.1:10550)"
  fi
  echo "mode: $mode ($why; --mode chooses)"
fi

run mkdir -p "$(dirname "$bin_dst")" "$(dirname "$unit_dst")" "$conf_dir/config" "$(dirname "$env_file")"
# Replace the binary atomically so a running agent is not disturbed mid-copy.
run cp "$bin_src" "$bin_dst.new"
run chmod 0755 "$bin_dst.new"
run mv -f "$bin_dst.new" "$bin_dst"
run install -m 0644 "$here/edgemesh.service" "$unit_dst"
if [ ! -e "$conf" ]; then
  case "$mode" in
    edge) $cli config defaults | write "$conf" 0644 ;;
    standalone)
      write "$conf" 0644 <<EOF
# edgemesh, standalone: no Kubernetes. Services and endpoints come from /etc/edgemesh/catalog.yaml (edit it;
# changes apply within a second). DNS and the proxy listen on the bridge address 169.254.96.16 with
# interception rules, as in a cluster. Every key: edgemesh config defaults; docs/config.md.
apiVersion: agent.edgemesh.config.kubeedge.io/v1alpha1
kind: EdgeMeshAgent
catalog:
  file: /etc/edgemesh/catalog.yaml
modules:
  edgeDNS:
    enable: true
  edgeProxy:
    enable: true
EOF
      ;;
    manual)
      write "$conf" 0644 <<EOF
# edgemesh with the Kubernetes API through a kubeconfig. Every key: edgemesh config defaults; docs/config.md.
apiVersion: agent.edgemesh.config.kubeedge.io/v1alpha1
kind: EdgeMeshAgent
kubeAPIConfig:
  kubeConfig: $kubeconfig
modules:
  edgeDNS:
    enable: true
  edgeProxy:
    enable: true
EOF
      ;;
  esac
  echo "$did the $mode config to $conf (edit it: see docs/config.md)"
else
  if [ "$dry" = no ] && ! $cli config check "$conf" >/dev/null; then
    echo "warning: $conf has problems; 'edgemesh config check $conf' lists them" >&2
  fi
fi
if [ "$mode" = standalone ] && [ ! -e "$catalog" ]; then
  $cli config example-catalog | write "$catalog" 0644
  echo "$did an example catalog to $catalog"
fi
if [ ! -e "$env_file" ]; then
  printf '# Environment for edgemesh.service.\n# NODE_NAME=my-node   # default: the hostname\n' | write "$env_file" 0644
fi

if systemd_live; then
  systemctl daemon-reload
  systemctl enable edgemesh.service >/dev/null
  if systemctl is-active --quiet edgemesh.service; then systemctl restart edgemesh.service; fi
  echo "installed ($mode); start it with: systemctl start edgemesh (status: edgemesh status, journalctl -u edgemesh)"
elif [ "$dry" = yes ]; then
  echo "dry run: nothing was changed"
else
  echo "installed ($mode, $bin_arch) into ${root:-/}"
fi
