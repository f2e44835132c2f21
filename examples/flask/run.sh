#!/usr/bin/env bash
# Runs the Flask example's end-to-end test (examples/flask/test_flask.py) with
# Debian's Python, which has python3-flask, python3-redis and gunicorn
# (.ci/run installs them); a python3 earlier on PATH (pyenv, a venv) may not.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec timeout 360 /usr/bin/python3 examples/flask/test_flask.py
