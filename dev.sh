#!/usr/bin/env bash
# Developer entry point. Two commands on a fresh machine:
#   bash dev.sh demo   # the main job: tiny-checkpoint image -> 3D asset -> .blend + render under out/
#   bash dev.sh test   # ruff + the whole test suite (what CI runs)
set -euo pipefail
cd "$(dirname "$0")"
VENV=.venv
PY="$VENV/bin/python"

setup() {
    if [ ! -x "$PY" ] || ! "$PY" -c "import torch, bpy, safetensors, huggingface_hub" 2>/dev/null; then
        python3.11 -m venv "$VENV" 2>/dev/null || python3 -m venv "$VENV"
        "$PY" -m pip install -q --upgrade pip
        "$PY" -m pip install -q torch==2.13.0
        "$PY" -m pip install -q -r requirements-dev.txt
    fi
}

case "${1:-}" in
    setup)
        setup ;;
    test)
        setup
        "$PY" -m ruff check .
        "$PY" -m ruff format --check .
        shift
        "$PY" -m pytest "$@" ;;
    demo)
        setup
        shift
        "$PY" -m blender_trellis2 demo "$@" ;;
    *)
        echo "usage: bash dev.sh {demo|test|setup} [args]" >&2
        exit 2 ;;
esac
