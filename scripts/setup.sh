#!/usr/bin/env bash
# Installs the Debian packages Strata needs (liburing, libaio, fio) when they are missing.
set -euo pipefail
need=()
dpkg -s liburing-dev >/dev/null 2>&1 || need+=(liburing-dev)
dpkg -s libaio-dev >/dev/null 2>&1 || need+=(libaio-dev)
command -v fio >/dev/null 2>&1 || need+=(fio)
if [ ${#need[@]} -gt 0 ]; then
    echo "setup: installing ${need[*]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
