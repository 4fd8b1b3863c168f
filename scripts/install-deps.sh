#!/usr/bin/env bash
# Installs what relion_zo needs on a fresh Debian machine, and nothing twice:
# MariaDB, RabbitMQ, RELION 3.1 and the build headers for mysqlclient from Debian's packages,
# then relion_zo itself with its Python dependencies. Servers are never started as system
# services here; `relion-zo stack up` runs them as private processes.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mariadb-server mariadb-client rabbitmq-server relion openmpi-bin
          libmariadb-dev pkg-config build-essential ghostscript)
missing=()
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "installing Debian packages: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # Debian's maintainer scripts would start the servers as system services; keep them off.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee /usr/sbin/policy-rc.d >/dev/null
    $sudo chmod +x /usr/sbin/policy-rc.d
  fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# An editable install of *this* checkout: later changes to the code need no reinstall (changes
# to setup.cfg do). Another checkout installed before (a second clone) is replaced.
here=$(pwd -P)
installed=$(cd / && python3 -c "import os, relion_zo, MySQLdb, zocalo, workflows, mrcfile, \
pytest, wheel; print(os.path.realpath(relion_zo.__file__))" 2>/dev/null || true)
if ! command -v relion-zo >/dev/null || [[ "$installed" != "$here"/* ]]; then
  python3 -m pip install -q -e ".[test]"
fi
