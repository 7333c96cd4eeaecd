#!/usr/bin/env bash
# Installs everything nsg-agent needs on a Debian 12 machine (run as root), idempotently:
# Debian packages, then a virtual environment in .venv with the project and its test extras.
#
# Why the venv reaches libnftables this way: the Python binding of libnftables ("import
# nftables") is not published on PyPI; Debian ships it in python3-nftables as a pure-Python
# ctypes wrapper around libnftables.so.1. Rather than --system-site-packages (which would let
# every Debian Python package shadow the venv's pinned ones), we put a one-line .pth file in
# the venv that adds a directory holding only a symlink to Debian's "nftables" package. Any
# CPython 3 can import it, since it only loads the shared library through ctypes.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv=${NSG_VENV:-$here/.venv}
extras=${1-test}  # "" installs the project without extras (scripts/provision.sh)

apt_pkgs=(nftables python3-nftables libnftables1 iproute2 iperf3 conntrack python3 python3-venv
          debootstrap systemd-container procps make etcd-server etcd-client openssl)
missing=()
for p in "${apt_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install: apt packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # etcd-server is for the fleet's tests and benchmark, which start their own etcd on a free
  # loopback port: the package's system service (127.0.0.1:2379), started by the install
  # where systemd runs, is not ours to keep running.
  if [[ " ${missing[*]} " == *" etcd-server "* ]] && [ -d /run/systemd/system ]; then
    systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

py=$(command -v python3)
if [ ! -x "$venv/bin/python" ]; then
  "$py" -m venv "$venv"
fi
binding=$(/usr/bin/python3 -c 'import nftables, os; print(os.path.dirname(nftables.__file__))')
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$venv/nft-binding"
ln -sfn "$binding" "$venv/nft-binding/nftables"
echo "$venv/nft-binding" > "$site/libnftables-binding.pth"

"$venv/bin/python" -m pip install -q --upgrade pip >/dev/null
"$venv/bin/python" -m pip install -q -e "$here${extras:+[$extras]}"
"$venv/bin/python" -c 'import nftables, nsg_agent; nftables.Nftables()' \
  || { echo "install: the libnftables binding does not load" >&2; exit 1; }
# Shell completion and the man page, generated from the parser (inside the venv: a
# developer install touches nothing outside the checkout; provision.sh installs them system-wide).
mkdir -p "$venv/share/bash-completion/completions" "$venv/share/man/man1"
"$venv/bin/nsg-agent" completion bash > "$venv/share/bash-completion/completions/nsg-agent"
"$venv/bin/nsg-agent" manpage > "$venv/share/man/man1/nsg-agent.1"
echo "install: ready ($venv)"
