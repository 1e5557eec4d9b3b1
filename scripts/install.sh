#!/bin/sh
# Install edgemesh as a systemd service. Idempotent: running it again upgrades the binary and the unit and
# never overwrites your config.
#
#   sudo scripts/install.sh                     # binary from dist/edgemesh (npm run build)
#   sudo scripts/install.sh --binary ./edgemesh-linux-arm64
#   sudo scripts/install.sh --uninstall         # removes binary and unit; keeps /etc/edgemesh and state
#   sudo scripts/install.sh --uninstall --purge # also removes /etc/edgemesh and /var/lib/edgemesh
#
# DESTDIR=/some/root installs into a staging root (packaging, tests); systemctl is then not called.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=${DESTDIR:-}
bin_src="$here/../dist/edgemesh"
action=install
purge=no

while [ $# -gt 0 ]; do
  case "$1" in
    --binary) bin_src=$2; shift 2 ;;
    --binary=*) bin_src=${1#--binary=}; shift ;;
    --uninstall) action=uninstall; shift ;;
    --purge) purge=yes; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
  esac
done

bin_dst="$root/usr/local/bin/edgemesh"
unit_dst="$root/etc/systemd/system/edgemesh.service"
conf_dir="$root/etc/edgemesh"
conf="$conf_dir/config/edgemesh-agent.yaml"
env_file="$root/etc/default/edgemesh"

# Only talk to systemd when installing into the live system and systemd is running.
systemd_live() { [ -z "$root" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; }

if [ "$action" = uninstall ]; then
  if systemd_live; then systemctl disable --now edgemesh.service 2>/dev/null || true; fi
  rm -f "$bin_dst" "$unit_dst"
  if systemd_live; then systemctl daemon-reload; fi
  if [ "$purge" = yes ]; then
    rm -rf "$conf_dir" "$root/var/lib/edgemesh" "$env_file"
    echo "edgemesh removed, with its config and state"
  else
    echo "edgemesh removed; config kept in $conf_dir and state in $root/var/lib/edgemesh (--purge removes them)"
  fi
  exit 0
fi

if [ ! -x "$bin_src" ]; then
  echo "install.sh: no binary at $bin_src; run 'npm run build' first or pass --binary FILE" >&2
  exit 1
fi
if ! "$bin_src" version >/dev/null 2>&1; then
  echo "install.sh: $bin_src does not run on this machine (wrong architecture?)" >&2
  exit 1
fi

mkdir -p "$(dirname "$bin_dst")" "$(dirname "$unit_dst")" "$conf_dir/config" "$(dirname "$env_file")"
# Replace the binary atomically so a running agent is not disturbed mid-copy.
cp "$bin_src" "$bin_dst.new" && chmod 0755 "$bin_dst.new" && mv -f "$bin_dst.new" "$bin_dst"
install -m 0644 "$here/edgemesh.service" "$unit_dst"
if [ ! -e "$conf" ]; then
  "$bin_dst" config defaults > "$conf.new" && chmod 0644 "$conf.new" && mv "$conf.new" "$conf"
  echo "wrote the default config to $conf (edit it: see docs/config.md)"
else
  if ! "$bin_dst" config check "$conf" >/dev/null; then
    echo "warning: $conf has problems; 'edgemesh config check $conf' lists them" >&2
  fi
fi
if [ ! -e "$env_file" ]; then
  printf '# Environment for edgemesh.service.\n# NODE_NAME=my-node   # default: the hostname\n' > "$env_file"
fi

if systemd_live; then
  systemctl daemon-reload
  systemctl enable edgemesh.service >/dev/null
  if systemctl is-active --quiet edgemesh.service; then systemctl restart edgemesh.service; fi
  echo "installed; start it with: systemctl start edgemesh (status: edgemesh status, journalctl -u edgemesh)"
else
  echo "installed into ${root:-/}"
fi
