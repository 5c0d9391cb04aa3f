#!/usr/bin/env bash
# Installs the database servers the integration tests run: MariaDB 10.11 from Debian bookworm
# (apt) and MySQL 9.7 from Debian sid, unpacked next to the other test tools and run through
# sid's own dynamic loader (bookworm's glibc is too old for it; the host's libraries are never
# touched).
#
#   MariaDB:  mariadbd, mariadb, mariadb-install-db, mariabackup, mbstream, mariadb-binlog (apt)
#   MySQL:    ${MYHOARD_TEST_TOOLS:-<repo>/.test-tools}/mysql97/
#               sysroot/   the unpacked sid packages (mysql-server-core, mysql-client-core and
#                          the libraries they need, sid's libc6 among them)
#               bin/       wrappers: mysqld, mysql, mysqlbinlog, mysqladmin, mysqldump
#               version    the `mysqld --version` line, written last
#
# The MySQL wrappers are deliberately not in <tools>/bin: MariaDB also installs `mysql`,
# `mysqld` and `mysqlbinlog`, and tools that mean MariaDB's must keep finding it. Each wrapper
# passes `--no-defaults` unless the caller names a defaults option itself (the host's
# /etc/mysql/my.cnf belongs to MariaDB), and the mysqld wrapper adds the --basedir, message,
# charset and plugin directories inside the sysroot.
#
# Runs as root on Debian bookworm. Idempotent: a second run only checks versions. The packaged
# MariaDB service is never left running or enabled: tests start their own servers.
set -euo pipefail

# sid moves; these are the versions the harness was written against. Anything else fails.
MYSQL_SERIES=9.7
MARIADB_SERIES=10.11

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools=${MYHOARD_TEST_TOOLS:-$repo/.test-tools}
mysql_root=$tools/mysql97

say() { printf 'install-db: %s\n' "$*"; }
die() { printf 'install-db: error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root (or sudo) to run: $*"
    fi
}

# --- MariaDB from bookworm ----------------------------------------------------------------------

mariadb_missing=no
for tool in mariadbd mariadb mariadb-install-db mariabackup mbstream mariadb-binlog; do
    command -v "$tool" >/dev/null 2>&1 || mariadb_missing=yes
done

if [ "$mariadb_missing" = yes ]; then
    # Debian's postinst starts the service through invoke-rc.d unless policy-rc.d says no
    # (exit 101). Containers usually have one; add a temporary one where there is none.
    policy=/usr/sbin/policy-rc.d
    own_policy=no
    if [ ! -e "$policy" ]; then
        as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"
        own_policy=yes
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q
    say "apt-get install mariadb-server mariadb-backup mariadb-client"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        mariadb-server mariadb-backup mariadb-client
    if [ "$own_policy" = yes ]; then
        as_root rm -f "$policy"
        trap - EXIT
    fi
    # Whatever the policy did: the packaged service must neither run now nor start at boot.
    if [ -d /run/systemd/system ]; then
        as_root systemctl disable --now mariadb.service >/dev/null 2>&1 || true
    else
        # Also removes the systemd wants link when systemctl is installed.
        as_root update-rc.d mariadb disable >/dev/null 2>&1 || true
        if [ -s /run/mysqld/mysqld.pid ]; then
            pid=$(cat /run/mysqld/mysqld.pid)
            say "stopping the packaged mariadbd (pid $pid)"
            as_root kill -TERM "$pid" 2>/dev/null || true
            for _ in $(seq 1 100); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
        fi
    fi
else
    say "mariadb already installed"
fi

mariadb_version=$(mariadbd --no-defaults --version)
case "$mariadb_version" in
    *" Ver $MARIADB_SERIES."*-MariaDB*) say "mariadbd: ${mariadb_version#*Ver }" ;;
    *) die "expected MariaDB $MARIADB_SERIES.x, got: $mariadb_version" ;;
esac
mariabackup --no-defaults --version >/dev/null 2>&1 || die "mariabackup does not run"

# --- MySQL from sid, unpacked -------------------------------------------------------------------

mysql_version_ok() {
    [ -x "$mysql_root/bin/mysqld" ] && [ -f "$mysql_root/version" ] || return 1
    local got
    got=$("$mysql_root/bin/mysqld" --version 2>/dev/null) || return 1
    [ "$got" = "$(cat "$mysql_root/version")" ]
}

if mysql_version_ok; then
    say "mysql already installed in $mysql_root"
else
    # The Debian mirror this machine already uses, for the sid suite.
    mirror=
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [ -z "$mirror" ] && [ -f /etc/apt/sources.list ]; then
        mirror=$(awk '$1 == "deb" && $0 ~ / bookworm / { for (i = 2; i <= NF; i++) if ($i ~ /^https?:/) { print $i; exit } }' \
            /etc/apt/sources.list)
    fi
    mirror=${mirror:-http://deb.debian.org/debian}
    say "fetching MySQL $MYSQL_SERIES from sid on $mirror"

    # A private apt state: an empty dpkg status makes apt resolve the whole closure (sid's libc6,
    # libstdc++6, libicu, ...), and nothing of the host's apt state is touched.
    work=$tools/mysql97.tmp
    rm -rf "$work"
    apt_dir=$work/apt
    mkdir -p "$apt_dir"/{lists/partial,archives/partial,etc/sources.list.d,etc/preferences.d} "$work/sysroot" "$work/bin"
    : >"$apt_dir/status"
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" >"$apt_dir/etc/sources.list"
    # Check-Valid-Until: the mirror may be a frozen snapshot whose sid Release file has expired.
    cat >"$apt_dir/apt.conf" <<CONF
Dir::State "$apt_dir"; Dir::State::Lists "$apt_dir/lists"; Dir::State::status "$apt_dir/status";
Dir::Cache "$apt_dir"; Dir::Cache::archives "$apt_dir/archives";
Dir::Etc::SourceList "$apt_dir/etc/sources.list"; Dir::Etc::SourceParts "$apt_dir/etc/sources.list.d";
Dir::Etc::Preferences "$apt_dir/etc/preferences"; Dir::Etc::PreferencesParts "$apt_dir/etc/preferences.d";
APT::Architecture "amd64"; APT::Architectures { "amd64"; };
APT::Install-Recommends "false"; Acquire::Languages "none";
Acquire::Check-Valid-Until "false";
CONF
    APT_CONFIG=$apt_dir/apt.conf apt-get -q update >"$work/apt-update.log" 2>&1 ||
        { cat "$work/apt-update.log" >&2; die "apt-get update for sid failed"; }
    APT_CONFIG=$apt_dir/apt.conf apt-get -q -y install --download-only \
        "mysql-server-core=$MYSQL_SERIES.*" "mysql-client-core=$MYSQL_SERIES.*" >"$work/apt-install.log" 2>&1 ||
        { cat "$work/apt-install.log" >&2; die "downloading mysql-server-core $MYSQL_SERIES.* from sid failed"; }
    for deb in "$apt_dir"/archives/*.deb; do
        dpkg -x "$deb" "$work/sysroot"
    done

    # The wrappers name the final location, so they are written for it and work once moved.
    x=$mysql_root/sysroot
    loader=$x/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2
    [ -e "$work/sysroot/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" ] || die "sid's libc6 brought no dynamic loader"
    for program in sbin/mysqld bin/mysql bin/mysqlbinlog bin/mysqladmin bin/mysqldump; do
        name=${program#*/}
        [ -x "$work/sysroot/usr/$program" ] || die "$program is missing from the sid packages"
        extra=
        if [ "$name" = mysqld ]; then
            extra="--basedir=$x/usr --lc-messages-dir=$x/usr/share/mysql --character-sets-dir=$x/usr/share/mysql/charsets --plugin-dir=$x/usr/lib/mysql/plugin"
        fi
        cat >"$work/bin/$name" <<WRAPPER
#!/bin/sh
# MySQL $MYSQL_SERIES $name from Debian sid, run through sid's own dynamic loader (tests/install-db.sh).
# Defaults files are not read unless asked for: the host's /etc/mysql/my.cnf is MariaDB's.
defaults=--no-defaults
case "\${1:-}" in
    --no-defaults|--defaults-file=*|--defaults-extra-file=*|--print-defaults) defaults=\$1; shift ;;
esac
exec "$loader" --library-path "$x/usr/lib/x86_64-linux-gnu" "$x/usr/$program" "\$defaults" $extra "\$@"
WRAPPER
        chmod 755 "$work/bin/$name"
    done

    # Swap the new tree in, then check it from its final place.
    rm -rf "$work/apt"
    rm -rf "$mysql_root"
    mv "$work" "$mysql_root"
    got=$("$mysql_root/bin/mysqld" --version) || die "the unpacked mysqld does not run"
    case "$got" in
        *" Ver $MYSQL_SERIES."*) ;;
        *)
            rm -rf "$mysql_root"
            die "expected MySQL $MYSQL_SERIES.x from sid, got: $got"
            ;;
    esac
    "$mysql_root/bin/mysql" --version >/dev/null || die "the unpacked mysql client does not run"
    "$mysql_root/bin/mysqlbinlog" --version >/dev/null || die "the unpacked mysqlbinlog does not run"
    printf '%s\n' "$got" >"$mysql_root/version"
fi
say "mysqld: $(sed 's/.* Ver /Ver /' "$mysql_root/version")"
say "done; MySQL wrappers are in $mysql_root/bin"
