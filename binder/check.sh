#!/usr/bin/env bash
# Build a fresh venv from binder's files only, as repo2docker would, and run every notebook in it.
#   bash binder/check.sh            (from the repo root; takes a few minutes)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(mktemp -d)/binder-venv
python3 -m venv "$VENV"
REQS=binder/requirements.txt
# Where download.pytorch.org is unreachable (a sandbox with only the package registries), drop
# that index: the pinned torch then comes from the registry / local wheels, everything else is
# exactly binder's list.
if ! python3 -c "import urllib.request; urllib.request.urlopen('https://download.pytorch.org/whl/cpu/', timeout=5)" 2>/dev/null; then
  REQS=$(mktemp); grep -v '^--extra-index-url' binder/requirements.txt > "$REQS"
  echo "download.pytorch.org unreachable: checking binder/requirements.txt without its extra index"
fi
"$VENV/bin/python" -m pip install -q -r "$REQS" nbclient nbformat
for nb in notebooks/*.ipynb; do
  echo "running $nb"
  "$VENV/bin/python" - "$nb" <<'PY'
import sys, nbformat
from nbclient import NotebookClient
nb = nbformat.read(sys.argv[1], as_version=4)
NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": "notebooks"}}).execute()
PY
done
echo "binder check: all notebooks ran in a venv built from binder/requirements.txt"
rm -rf "$(dirname "$VENV")"
