#!/usr/bin/env bash
# Builds the DEB (cargo-deb) and RPM (cargo-generate-rpm) packages from one release build and
# checks them: both hold exactly the expected files with the expected modes and the same
# contents, the config is a conffile in both, the RPM scriptlets are the ones in packaging/rpm.
# Then installs the RPM into a scratch root (rpm cannot own Debian's) and checks what it installed,
# and installs the DEB on this machine, checks the installed files, the config (validated by
# the installed binary, also as user mysql, who runs the daemon), the registered conffile and
# the unit (systemd-analyze verify), and purges the package again, also when a check fails.
#
# Runs as root (or with sudo) on Debian bookworm. Installs what is missing: cargo-deb and
# cargo-generate-rpm (crates.io, pinned) and the rpm CLI (apt). Reuses the cargo target
# directory (CARGO_TARGET_DIR is honoured), so an up-to-date release build costs nothing.
# Packages are left in <target>/packages/.
set -euo pipefail
# Sorting and the expected lists below assume byte order.
export LC_ALL=C

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

# Every file both packages must hold (directories aside), with its mode.
EXPECTED_FILES='-rw-r----- /etc/myhoard/myhoard.json
-rwxr-xr-x /usr/bin/myhoard
-rw-r--r-- /usr/lib/systemd/system/myhoard.service
-rw-r--r-- /usr/share/doc/myhoard/README.md
-rw-r--r-- /usr/share/doc/myhoard/configuration.md
-rw-r--r-- /usr/share/doc/myhoard/copyright
-rw-r--r-- /usr/share/doc/myhoard/examples/mysqld-override.conf
-rw-r--r-- /usr/share/doc/myhoard/examples/sudoers.d-myhoard'
CONFIG=/etc/myhoard/myhoard.json

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

say() { printf 'packages: %s\n' "$*"; }
die() { printf 'packages: FAILED: %s\n' "$*" >&2; exit 1; }
indent() { sed 's/^/  /'; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# Compares two listings and shows the difference when they differ.
same_or_die() {
    local what=$1 expected=$2 actual=$3
    if [ "$expected" != "$actual" ]; then
        printf 'packages: FAILED: %s differs (< expected, > actual):\n' "$what" >&2
        diff <(printf '%s\n' "$expected") <(printf '%s\n' "$actual") >&2 || true
        exit 1
    fi
}

# --- tools --------------------------------------------------------------------------------------

installed_crate_version() {
    cargo install --list | sed -n "s/^$1 v\([^:]*\):\$/\1/p"
}
for tool in "cargo-deb $CARGO_DEB_VERSION" "cargo-generate-rpm $CARGO_GENERATE_RPM_VERSION"; do
    read -r name version <<<"$tool"
    if [ "$(installed_crate_version "$name")" = "$version" ]; then
        say "$name $version already installed"
    else
        say "cargo install --locked $name@$version"
        cargo install --locked "$name@$version"
    fi
done
if ! command -v rpm >/dev/null 2>&1; then
    say "apt-get install rpm (to query the RPM)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends rpm
fi

# --- build --------------------------------------------------------------------------------------

target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || die "cannot find the cargo target directory"
out=$target_dir/packages
rm -rf "$out"
mkdir -p "$out"

say "cargo build --release --locked (target directory $target_dir)"
cargo build --release --locked --bin myhoard

# The release profile keeps line tables (an 80 MB binary, for backtraces in development); the
# packages ship the binary stripped. cargo-deb strips its own copy only when asked (--strip);
# cargo-generate-rpm never does, so it gets a copy stripped the same way, through a target
# directory of its own (it maps target/release/ in its asset list to <dir>/release/).
say "cargo deb --no-build --strip"
cargo deb --no-build --strip --output "$out/"
mkdir -p "$out/rpm-target/release"
strip --strip-unneeded --remove-section=.comment --remove-section=.note \
    -o "$out/rpm-target/release/myhoard" "$target_dir/release/myhoard"
say "cargo generate-rpm"
cargo generate-rpm --target-dir "$out/rpm-target" --output "$out/"

debs=("$out"/*.deb)
rpms=("$out"/*.rpm)
if ! { [ ${#debs[@]} -eq 1 ] && [ -f "${debs[0]}" ]; }; then
    die "expected one .deb in $out, found: ${debs[*]}"
fi
if ! { [ ${#rpms[@]} -eq 1 ] && [ -f "${rpms[0]}" ]; }; then
    die "expected one .rpm in $out, found: ${rpms[*]}"
fi
deb=${debs[0]}
rpm=${rpms[0]}
say "built $deb ($(du -h "$deb" | cut -f1)) and $rpm ($(du -h "$rpm" | cut -f1))"

# --- package contents ---------------------------------------------------------------------------

# "mode path" of every non-directory entry. dpkg-deb -c prints "mode owner size date time ./path".
deb_files=$(dpkg-deb -c "$deb" | awk '$1 !~ /^d/ { sub(/^\./, "", $6); print $1, $6 }' | sort -k2)
rpm_files=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpm" | awk '$1 !~ /^d/' | sort -k2)
say "DEB files:"
indent <<<"$deb_files"
say "RPM files:"
indent <<<"$rpm_files"
same_or_die "the DEB's file list" "$EXPECTED_FILES" "$deb_files"
same_or_die "the RPM's file list" "$EXPECTED_FILES" "$rpm_files"

# Same contents: the sha256 of every file the DEB unpacks against the RPM's file digests.
unpacked=$out/deb-unpacked
dpkg-deb -x "$deb" "$unpacked"
deb_digests=$(cd "$unpacked" && find . -type f -printf '%P\n' | sort | xargs sha256sum |
    awk '{ print $1, "/" $2 }')
digest_algo=$(rpm -qp --qf '%{FILEDIGESTALGO}' "$rpm")
[ "$digest_algo" = 8 ] || die "the RPM's file digests are not sha256 (algorithm $digest_algo)"
rpm_digests=$(rpm -qp --qf '[%{FILEDIGESTS} %{FILENAMES}\n]' "$rpm" | sort -k2)
same_or_die "file contents, DEB against RPM (sha256)" "$deb_digests" "$rpm_digests"
if readelf -S "$unpacked/usr/bin/myhoard" | grep -qE '\.debug_(info|line)'; then
    die "/usr/bin/myhoard in the packages still has debug sections (not stripped)"
fi

# DEB metadata: the conffile, the dependencies, the maintainer scripts.
deb_conffiles=$(dpkg-deb -I "$deb" conffiles)
same_or_die "the DEB's conffiles" "$CONFIG" "$deb_conffiles"
deb_depends=$(dpkg-deb -f "$deb" Depends)
deb_recommends=$(dpkg-deb -f "$deb" Recommends)
say "DEB Depends: $deb_depends"
say "DEB Recommends: $deb_recommends"
case $deb_depends in *liblzma5*) ;; *) die "DEB Depends lacks liblzma5 (the binary links it): $deb_depends" ;; esac
case $deb_recommends in *mariadb-backup*) ;; *) die "DEB Recommends lacks mariadb-backup: $deb_recommends" ;; esac
deb_postinst=$(dpkg-deb -I "$deb" postinst)
# Our part (the config's group), and cargo-deb's systemd part, which only re-enables a unit the
# operator had enabled ("was-enabled") and never starts it on a first install.
for needle in 'chgrp mysql' 'deb-systemd-helper --quiet was-enabled' 'daemon-reload'; do
    grep -qF "$needle" <<<"$deb_postinst" || die "the DEB postinst lacks '$needle'"
done
if grep -qE 'deb-systemd-invoke +start' <<<"$deb_postinst"; then
    die "the DEB postinst starts myhoard on install (it needs a real config first)"
fi

# RPM metadata: the config is %config(noreplace) and group mysql, the scriptlets are the files
# (cargo-generate-rpm silently uses the path itself as the script when the file is missing).
rpm_config=$(rpm -qp --qf '[%{FILEFLAGS:fflags} %{FILEGROUPNAME} %{FILENAMES}\n]' "$rpm" | grep " $CONFIG\$" || true)
case $rpm_config in
    *c*n*" mysql $CONFIG") ;;
    *) die "$CONFIG in the RPM is not %config(noreplace) with group mysql: '$rpm_config'" ;;
esac
rpm_scripts=$(rpm -qp --scripts "$rpm")
for needle in 'systemctl daemon-reload' 'disable --now myhoard.service' 'try-restart myhoard.service'; do
    grep -qF "$needle" <<<"$rpm_scripts" || die "the RPM scriptlets lack '$needle': $rpm_scripts"
done
say "RPM Requires: $(rpm -qp --requires "$rpm" | tr '\n' ' ')"
say "RPM Recommends: $(rpm -qp --recommends "$rpm" | tr '\n' ' ')"

# --- install the RPM into a scratch root --------------------------------------------------------

# This is Debian: rpm cannot own the real root here. A root of its own (with this machine's users
# and groups, so the config gets group mysql) shows that rpm installs the package, that the
# installed files verify, and that the installed binary accepts the installed config. The
# scriptlets (systemctl calls) and the dependencies (Debian's libraries are not in an rpm
# database) are left out: the DEB below is installed with both.
rpm_root=$out/rpm-root
rm -rf "$rpm_root"
mkdir -p "$rpm_root/etc"
cp /etc/passwd /etc/group "$rpm_root/etc/"
say "rpm --root $rpm_root -i --nodeps --noscripts $rpm"
rpm --root "$rpm_root" --initdb
rpm --root "$rpm_root" -i --nodeps --noscripts "$rpm" 2>&1 | grep -v 'use Alien\|know what you are doing' | indent || true
rpm --root "$rpm_root" -q myhoard >/dev/null || die "rpm -q myhoard in $rpm_root: not installed"
rpm_verify=$(rpm --root "$rpm_root" -V --nodeps myhoard 2>&1 || true)
[ -z "$rpm_verify" ] || die "rpm -V myhoard in $rpm_root: $rpm_verify"
rpm_installed=$(cd "$rpm_root" && find usr etc -type f -not -path etc/passwd -not -path etc/group \
    -printf '%M /%p\n' | sort -k2)
same_or_die "the files the RPM installed" "$EXPECTED_FILES" "$rpm_installed"
if getent group mysql >/dev/null 2>&1; then
    rpm_config_owner=$(stat -c '%A %U:%G' "$rpm_root$CONFIG")
    [ "$rpm_config_owner" = "-rw-r----- root:mysql" ] ||
        die "$CONFIG from the RPM is '$rpm_config_owner', expected -rw-r----- root:mysql"
fi
say "$rpm_root/usr/bin/myhoard validate-config --config $rpm_root$CONFIG"
"$rpm_root/usr/bin/myhoard" validate-config --config "$rpm_root$CONFIG" ||
    die "validate-config of the config the RPM installed failed"
rpm --root "$rpm_root" -e --noscripts --nodeps myhoard
[ ! -e "$rpm_root/usr/bin/myhoard" ] || die "rpm -e left /usr/bin/myhoard in $rpm_root"
rm -rf "$rpm_root"

# --- install the DEB ----------------------------------------------------------------------------

# Never replace or purge an installation this script did not make.
if dpkg-query -W -f '${Status}' myhoard 2>/dev/null | grep -q 'installed'; then
    die "a myhoard package is already installed here; this test would replace and purge it"
fi
for path in /usr/bin/myhoard "$CONFIG" /usr/lib/systemd/system/myhoard.service; do
    [ ! -e "$path" ] || die "$path already exists (a manual install?); this test would remove it"
done

installed=no
purge() {
    say "dpkg --purge myhoard"
    as_root dpkg --purge myhoard
    installed=no
}
cleanup() {
    local status=$?
    if [ "$installed" = yes ]; then
        purge || status=1
    fi
    exit "$status"
}
trap cleanup EXIT

say "apt-get install $deb"
installed=yes
as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$deb"

dpkg-query -W -f '${Status}' myhoard | grep -q 'install ok installed' ||
    die "myhoard is not 'install ok installed' after apt-get install"
installed_files=$(dpkg -L myhoard | while read -r path; do [ -d "$path" ] || echo "$path"; done | sort)
same_or_die "dpkg -L myhoard" "$(cut -d' ' -f2 <<<"$EXPECTED_FILES")" "$installed_files"
# dpkg --verify prints a line per file whose contents differ from the package.
verify=$(as_root dpkg --verify myhoard || true)
[ -z "$verify" ] || die "dpkg --verify myhoard: $verify"

conffiles=$(dpkg-query --showformat='${Conffiles}\n' -W myhoard)
read -r conffile_path conffile_md5 <<<"$conffiles"
if ! { [ "$conffile_path" = "$CONFIG" ] &&
    [ "$conffile_md5" = "$(md5sum <etc/myhoard.json | cut -d' ' -f1)" ]; }; then
    die "registered conffiles are '$conffiles', expected $CONFIG with the md5 of etc/myhoard.json"
fi
say "conffile registered: $conffiles"

say "/usr/bin/myhoard validate-config --config $CONFIG"
/usr/bin/myhoard validate-config --config "$CONFIG" || die "validate-config of the installed config failed"

# The daemon runs as mysql (User= in the unit): the postinst gives the config to group mysql.
if getent passwd mysql >/dev/null 2>&1; then
    config_owner=$(stat -c '%A %U:%G' "$CONFIG")
    [ "$config_owner" = "-rw-r----- root:mysql" ] || die "$CONFIG is '$config_owner', expected -rw-r----- root:mysql"
    say "as user mysql: /usr/bin/myhoard validate-config --config $CONFIG"
    as_root runuser -u mysql -- /usr/bin/myhoard validate-config --config "$CONFIG" ||
        die "user mysql cannot validate $CONFIG"
elif [ "${CI:-}" = true ]; then
    die "no mysql user: install MariaDB first (tests/install-test-deps.sh)"
else
    say "SKIPPED the check as user mysql: no such user here (install mariadb-server)"
fi

if command -v systemd-analyze >/dev/null 2>&1; then
    # verify loads the unit as systemd would and checks its syntax, that the Exec binaries exist
    # and are executable, and the units it names. It also reports the units it is ordered after
    # that are not installed here (mysql.service, mariadb.service: the unit lists both and needs
    # neither), so only its lines about myhoard.service itself count.
    say "systemd-analyze verify /usr/lib/systemd/system/myhoard.service"
    analyze=$(systemd-analyze verify /usr/lib/systemd/system/myhoard.service 2>&1) && analyze_status=0 || analyze_status=$?
    [ -z "$analyze" ] || indent <<<"$analyze"
    complaints=$(grep -F 'myhoard.service' <<<"$analyze" || true)
    [ -z "$complaints" ] || die "systemd-analyze verify reports problems in myhoard.service: $complaints"
    if [ "$analyze_status" -ne 0 ] && [ -z "$analyze" ]; then
        die "systemd-analyze verify exited with $analyze_status"
    fi
elif [ "${CI:-}" = true ]; then
    die "systemd-analyze is missing (package systemd)"
else
    say "SKIPPED systemd-analyze verify: not installed"
fi

# --- purge --------------------------------------------------------------------------------------

purge
for path in /usr/bin/myhoard "$CONFIG" /etc/myhoard /usr/lib/systemd/system/myhoard.service /usr/share/doc/myhoard; do
    [ ! -e "$path" ] || die "$path is still there after dpkg --purge myhoard"
done
if dpkg-query -W -f '${Status}' myhoard 2>/dev/null | grep -q 'installed'; then
    die "myhoard is still installed after dpkg --purge"
fi
say "OK: $deb and $rpm hold the same $(wc -l <<<"$EXPECTED_FILES") files; the RPM installs into a scratch root and validates; the DEB installs, validates and purges cleanly"
