#!/usr/bin/env bash
# Create the peer servers' own virtual environment (default .venv-peers, gitignored): infinity-emb with
# its optimum/ONNX Runtime engine, kept apart from twinserve's .venv because their pins differ.
#
# The versions below are the set that installs and starts together offline (issue 15): torch 2.13.0
# CPU goes in FIRST, so nothing later resolves it to a CUDA build; optimum 1.24 is the last release
# whose ORTModel API infinity 0.0.78 calls; transformers < 4.49 and pyarrow < 22 are what that
# optimum and infinity's datasets import accept.
set -euo pipefail
VENV=${1:-.venv-peers}
PYTHON=${PYTHON:-python3}
INFINITY_VERSION=${INFINITY_VERSION:-0.0.78}

if [ -f "$VENV/.installed" ]; then
  echo "peer environment ready at $VENV (remove it to reinstall)"
  exit 0
fi
test -d "$VENV" || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip"
$PIP install -q --upgrade pip
$PIP install -q torch==2.13.0
$PIP install -q "infinity-emb[server,optimum]==$INFINITY_VERSION" "optimum[onnxruntime]==1.24.0" \
  "transformers<4.49" "pyarrow<22" "torch==2.13.0"
"$VENV/bin/python" -c "import infinity_emb, onnxruntime, optimum.onnxruntime; print('infinity-emb', infinity_emb.__version__, 'onnxruntime', onnxruntime.__version__)"
touch "$VENV/.installed"
echo "peer environment ready at $VENV"
