#!/usr/bin/env bash
# The whole test suite, from a fresh Debian bookworm machine: installs every tool the tests
# need (tests/install-test-deps.sh), checks formatting and lints, runs all tests with
# cargo-nextest, then builds and checks the packages (tests/packages.sh) and runs the DEB under a
# systemd of its own (tests/systemd.sh). Tests start their own servers (SeaweedFS, Azurite, fake-gcs-server) on free
# 127.0.0.1 ports and stop them when they end.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== installing test dependencies"
tests/install-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --check

# Everything is built in the release profile: the tests and the packages share one build of the
# dependencies, the lints share its build scripts (the C libraries) and proc macros, and the
# tests run the very binary that tests/packages.sh packages.
echo "== cargo clippy"
cargo clippy --release --all-targets --locked -- -D warnings

if cargo tree --locked -e normal,build | grep -qi tokio; then
    echo "tokio is in the dependency tree: the daemon must stay free of async runtimes" >&2
    exit 1
fi

echo "== tests"
cargo nextest run --release --locked --no-fail-fast "$@"

echo "== packages"
tests/packages.sh

echo "== the DEB under systemd"
tests/systemd.sh
