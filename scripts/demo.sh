#!/usr/bin/env bash
# The README's main job: a whole VNet in network namespaces, subnet and NIC NSGs enforced by
# nsg-agent, proven cell by cell with real packets. Run as root on Debian 12.
#   bash scripts/demo.sh         install, bring the lab up, start the agent, print the probe matrix
#   bash scripts/demo.sh probe   probe again (after editing examples/lab-demo.yaml)
#   bash scripts/demo.sh down    stop the agent and remove the lab
# It never touches the host's own firewall, addresses or routes (see docs/lab.md).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh >/dev/null   # also installs make
case "${1:-up}" in
  up) exec make --no-print-directory demo ;;
  probe) exec make --no-print-directory demo-probe ;;
  down) exec make --no-print-directory demo-down ;;
  *) echo "usage: $0 [up|probe|down]" >&2; exit 2 ;;
esac
