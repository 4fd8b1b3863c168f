#!/usr/bin/env bash
# Installs what relion_zo needs on a fresh Debian machine, and nothing twice:
# MariaDB, RabbitMQ, Slurm and munge, RELION 3.1 and the build headers for mysqlclient from
# Debian's packages, then relion_zo itself with its Python dependencies. Servers are never
# started as system services here; `relion-zo stack up` runs them as private processes.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(mariadb-server mariadb-client rabbitmq-server relion openmpi-bin
          libmariadb-dev pkg-config build-essential ghostscript)
# RELION 3.1 runs CTFFIND (and relion-zo-ctffind-aspire) through `csh` unless RELION_SHELL is set.
packages+=(tcsh)
# The local stack's one-node Slurm (Debian 12: Slurm 22.05, munge 0.5.15): the two daemons,
# munged and the clients (sbatch, squeue, scancel, scontrol). Their packaged configuration and
# munge key are not used; `relion-zo stack up` writes its own in .stack/slurm.
packages+=(slurmctld slurmd slurm-client munge)
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

# relion-zo-ctffind-aspire (docs/ctffind-standin.md), the CTFFIND 4.1 stand-in for RELION's
# CtfFind job where CTFFIND cannot be installed, runs ASPIRE's CTF estimator in a venv of its own:
# aspire pins finufft and confuse and would upgrade cloudpickle here, and its full requirements
# are ~740 MB. Only what `import aspire.ctf` and `aspire.apple` need is installed (aspire
# 0.14.3 without scikit-image and click, and cvxpy without its solvers: cvxpy-base, which
# relion-zo-cryolo-apple's import of aspire.apple needs and never calls).
aspire_venv=${RELION_ZO_ASPIRE_VENV:-${XDG_DATA_HOME:-$HOME/.local/share}/relion_zo/aspire-venv}
aspire_reqs="numpy scipy mrcfile finufft==2.5.0 confuse==2.1.0 pooch packaging scikit-learn tqdm psutil gemmi matplotlib pymanopt PyWavelets cvxpy-base"
if [ "$(cat "$aspire_venv/.relion_zo_requirements" 2>/dev/null)" != "aspire==0.14.3 $aspire_reqs" ]; then
  python3 -m venv --clear "$aspire_venv"
  # shellcheck disable=SC2086
  "$aspire_venv/bin/python" -m pip install -q $aspire_reqs
  "$aspire_venv/bin/python" -m pip install -q --no-deps aspire==0.14.3
  echo "aspire==0.14.3 $aspire_reqs" > "$aspire_venv/.relion_zo_requirements"
fi
command -v relion-zo-cryolo-apple >/dev/null || python3 -m pip install -q -e ".[test]"
