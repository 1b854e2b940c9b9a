#!/usr/bin/env bash
# The Python SDK's tests, as CI runs them: build the wheel (maturin, abi3), install it into a fresh
# virtualenv and run pytest against real processes of the release binary. Run from the repository
# root after `cargo build --release`.
#
#   FLOTILLA=target/release/flotilla   the binary the tests start
#   FLOTILLA_PY_VENV=target/py-venv    the virtualenv (wiped and made again)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${FLOTILLA_PY_VENV:-target/py-venv}
export FLOTILLA=${FLOTILLA:-$PWD/target/release/flotilla}
[ -x "$FLOTILLA" ] || { echo "error: no flotilla binary at $FLOTILLA: run \`cargo build --release\` first" >&2; exit 1; }

rm -rf "$VENV" target/wheels
python3 -m venv "$VENV"
# safetensors: the model export read as a user would; moto[server]: a real S3-compatible server on
# loopback for the S3 blob store test (boto3 comes with it).
"$VENV/bin/pip" install -q --disable-pip-version-check "maturin==1.16.0" "numpy==2.4.6" "pytest==9.2.0" \
  "safetensors==0.8.0" "moto[server]==5.2.5"
# --release shares target/release with the release build: only the extension module is compiled.
"$VENV/bin/maturin" build --release --locked --manifest-path crates/flotilla-py/Cargo.toml \
  --out target/wheels --quiet
"$VENV/bin/pip" install -q --disable-pip-version-check target/wheels/flotilla-*.whl
"$VENV/bin/python" -m pytest -q -p no:cacheprovider crates/flotilla-py/tests "$@"
