#!/usr/bin/env bash
# Installs nsg-agent system-wide as a systemd service on a Debian 12 machine, VM or container
# (run as root). The same script provisions the Vagrant lab, the systemd-nspawn integration
# test and CI's dry check.
#
#   /opt/nsg-agent/            a copy of the project (nsg_agent/, scripts/, systemd/, docs/, ...)
#   /opt/nsg-agent/.venv/      its virtual environment, made by scripts/install.sh (NSG_VENV);
#                              systemd/nsg-agent.service's ExecStart points there
#   /usr/local/bin/nsg-agent   a symlink to the venv's entry point
#   /usr/share/bash-completion/completions/nsg-agent, /usr/local/share/man/man1/nsg-agent.1
#   /etc/systemd/system/nsg-agent.service
#   /etc/nsg-agent/            the config directory (desired-state.yaml)
#
# Usage: provision.sh [--dry-run] [--no-start] [--config FILE] [--extras NAME]
#   --dry-run      print every action, change nothing
#   --no-start     install files only: neither enable nor start the service (without it, in
#                  a chroot or image with no running systemd, the unit is enabled offline)
#   --config FILE  install FILE as /etc/nsg-agent/desired-state.yaml
#   --extras NAME  install the project's optional extras NAME too (e.g. test)
# Environment:
#   NSG_PREFIX     stage everything under this directory instead of / (DESTDIR-style: paths
#                  inside the staged files stay the final ones); implies --no-start, and the
#                  venv's interpreter path then points into the prefix (a staging check, not a
#                  relocatable package)
#   NSG_VENV       the venv's path (default $NSG_PREFIX/opt/nsg-agent/.venv, where the unit
#                  expects it)
#
# Python packages come from PyPI through pip; with no network, point pip at a wheelhouse with
# PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR (the nspawn test does). Idempotent: run it again to update.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
dry=0 start=1 config="" extras=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry=1 ;;
    --no-start) start=0 ;;
    --config) config=${2:?--config needs a file}; shift ;;
    --config=*) config=${1#--config=} ;;
    --extras) extras=${2:?--extras needs a name}; shift ;;
    --extras=*) extras=${1#--extras=} ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "provision: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done

prefix=${NSG_PREFIX:-}
prefix=${prefix%/}
if [ -n "$prefix" ]; then
  start=0
  case "$prefix" in /*) ;; *) echo "provision: NSG_PREFIX must be absolute" >&2; exit 2 ;; esac
fi
opt=/opt/nsg-agent
dest=$prefix$opt
venv=${NSG_VENV:-$dest/.venv}
etc=$prefix/etc/nsg-agent
unitdir=$prefix/etc/systemd/system
unit=$src/systemd/nsg-agent.service

[ -f "$unit" ] || { echo "provision: $unit is missing" >&2; exit 1; }
[ -z "$config" ] || [ -f "$config" ] || { echo "provision: config $config not found" >&2; exit 2; }
if [ "$dry" = 0 ] && [ -z "$prefix" ] && [ "$(id -u)" != 0 ]; then
  echo "provision: run as root (or set NSG_PREFIX, or use --dry-run)" >&2; exit 1
fi

# run CMD...: do it, or with --dry-run print it (shell-quoted) instead.
run() {
  if [ "$dry" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}
note() { echo "provision: $*"; }

# 1. The project's files. A copy rather than the checkout itself: the service must not depend
#    on a working tree (or a Vagrant shared folder) staying where it was.
payload=(pyproject.toml nsg_agent scripts systemd)
for f in README.md LICENSE docs examples; do [ -e "$src/$f" ] && payload+=("$f"); done
note "copy ${payload[*]} from $src to $dest"
run install -d -m 0755 "$dest"
if [ "$src" != "$dest" ]; then
  if [ "$dry" = 1 ]; then
    printf '+ tar -C %q -cf - %s | tar -C %q -xf -\n' "$src" "${payload[*]}" "$dest"
  else
    # Replace the code directories wholesale so files removed upstream do not linger.
    for d in agent nsg_agent scripts systemd docs examples; do rm -rf "${dest:?}/$d"; done
    tar -C "$src" --exclude='__pycache__' --exclude='*.pyc' --exclude='*.egg-info' \
        --no-same-owner -cf - "${payload[@]}" | tar -C "$dest" --no-same-owner -xf -
    [ -f "$dest/README.md" ] || printf '# nsg-agent\n\nInstalled by scripts/provision.sh.\n' > "$dest/README.md"
  fi
fi

# 2. The venv, by the same install script developers and CI use.
note "venv $venv (scripts/install.sh${extras:+, extras $extras})"
run env NSG_VENV="$venv" bash "$dest/scripts/install.sh" "$extras"
run install -d -m 0755 "$prefix/usr/local/bin"
run ln -sfn "$venv/bin/nsg-agent" "$prefix/usr/local/bin/nsg-agent"
#    completion and man page, as install.sh generated them from the parser
run install -d -m 0755 "$prefix/usr/share/bash-completion/completions" "$prefix/usr/local/share/man/man1"
run install -m 0644 "$venv/share/bash-completion/completions/nsg-agent" "$prefix/usr/share/bash-completion/completions/nsg-agent"
run install -m 0644 "$venv/share/man/man1/nsg-agent.1" "$prefix/usr/local/share/man/man1/nsg-agent.1"

# 3. The unit and the config directory.
note "unit $unitdir/nsg-agent.service, config dir $etc"
run install -d -m 0755 "$unitdir"
run install -m 0644 "$unit" "$unitdir/nsg-agent.service"
run install -d -m 0755 "$etc"
if [ -n "$config" ]; then
  run install -m 0644 "$config" "$etc/desired-state.yaml"
fi

# 4. Enable (and start) the service when there is a desired state to enforce.
if [ ! -f "$etc/desired-state.yaml" ] && [ "$dry" = 0 ]; then
  note "no $etc/desired-state.yaml yet: the service is installed but not enabled"
  note "write it, then: systemctl enable --now nsg-agent"
  exit 0
fi
if [ -n "$prefix" ]; then
  note "staged under $prefix; nothing enabled or started"
elif [ "$start" = 1 ] && [ -d /run/systemd/system ]; then
  run systemctl daemon-reload
  run systemctl enable nsg-agent.service
  # restart, not start: a second provisioning run picks up new code and a new unit.
  run systemctl restart nsg-agent.service
  run systemctl --no-pager --lines=0 status nsg-agent.service
elif [ "$start" = 1 ]; then
  # No running systemd (a chroot or an image being built): enable offline (systemctl then
  # only creates the wants/ symlink); it starts at the next boot.
  run systemctl enable nsg-agent.service
  note "enabled offline; starts at the next boot"
else
  note "--no-start: installed, neither enabled nor started"
fi
note "done"
