#!/usr/bin/env bash
# Set up everything napari-msunet needs on a fresh Debian/Ubuntu machine (run as root or with
# sudo for the system packages): the X/OpenGL libraries napari and Qt need (Xvfb for machines
# without a display), a virtual environment in .venv, the CPU build of torch, then the project
# with its GUI and test extras. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    xvfb xauth libgl1 libgl1-mesa-dri libegl1 libxkbcommon-x11-0 libdbus-1-3 \
    libxcb-cursor0 libxcb-icccm4 libxcb-image0 libxcb-keysyms1 libxcb-randr0 \
    libxcb-render-util0 libxcb-shape0 libxcb-xinerama0 libxcb-xfixes0 libxcb-xkb1 \
    libfontconfig1 libglib2.0-0 >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: a plain "torch" requirement would pull a multi-GB CUDA build.
# On a CUDA machine install the matching CUDA wheel of torch instead before this script.
.venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[all,test]"
