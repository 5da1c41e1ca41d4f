#!/usr/bin/env bash
# Idempotent set-up for deepcod-testbed on Debian/Ubuntu, as root:
# Debian packages (Mininet and the tools it drives, the data sets), then a
# virtual environment at .venv with the pinned Python packages.
# A second call only checks, and prints "setup: ok".
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  mininet iperf3 ethtool iptables iproute2 bridge-utils net-tools cgroup-tools
  libpcap0.8 libnetfilter-queue1 libnetfilter-queue-dev gcc python3-dev python3-venv
  dataset-fashion-mnist git mate-backgrounds flite espeak-ng sox pocketsphinx-testdata
)

if [ "$(id -u)" -ne 0 ]; then
  echo "setup: run as root (Mininet needs it): sudo bash scripts/setup.sh" >&2
  exit 3
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

PYTHON=${PYTHON:-python3}
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml requirements.lock requirements-nodeps.txt | sha256sum | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
  echo "setup: ok"
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
# requirements.lock pins every package, torch's own dependencies included; torch is
# the CPU build 2.13.0 (a wheel on disk here; see README for other machines).
.venv/bin/pip install -q --disable-pip-version-check -c requirements.lock -e ".[test,cluster]"
.venv/bin/pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
.venv/bin/python -c "import torch, numba, mininet.net, netfilterqueue, yaml, scapy, ray" \
  || { echo "setup: the virtual environment is broken" >&2; exit 3; }
echo "$want" > "$stamp"
echo "setup: ok"
