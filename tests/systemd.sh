#!/usr/bin/env bash
# Runs the installed DEB under a real systemd, as an operator would on a Debian MariaDB server:
# the packaged unit (Type=notify, ExecStartPre validation, StateDirectory=, the hardening, reload),
# Debian's own mariadb.service with the mysqld drop-in and the sudoers example from the package,
# logs read back with journalctl, a backup, and then a restore of that backup onto an emptied
# server, for which the daemon (user mysql, under the unit's hardening) restarts mariadb through
# sudo and systemctl.
#
# This machine (and CI) has no systemd as PID 1, so the script boots one: systemd runs as PID 1
# of new PID, mount, network and UTS namespaces (unshare), and every command of the scenario runs
# inside them (nsenter). Nothing it does reaches the host: /tmp, /var/tmp, /run, /var/lib/mysql
# and the journal are fresh tmpfs mounts inside, /etc/systemd/system, /etc/sudoers.d, /etc/mysql
# and /etc/myhoard are private copies, and the network namespace has only its own loopback (so
# MariaDB's port 3306 and myhoard's 16001 are free whatever runs outside). Units that would touch
# the host's kernel settings (sysctl, binfmt, module loading, the root remount) are masked.
# Outside the namespaces it installs the DEB that tests/packages.sh built, and purges it at the
# end; /var/lib/myhoard, which systemd creates for the unit, is removed again too.
#
# Runs as root on Debian bookworm after tests/packages.sh (which leaves the DEB in
# <target>/packages/). Installs sudo if missing. Under CI=true nothing is skipped.
set -euo pipefail
export LC_ALL=C

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

say() { printf 'systemd: %s\n' "$*"; }
die() {
    printf 'systemd: FAILED: %s\n' "$*" >&2
    exit 1
}
indent() { sed 's/^/  /'; }

[ "$(id -u)" -eq 0 ] || die "run as root: the test boots systemd in namespaces of its own"

# --- preconditions ------------------------------------------------------------------------------

missing=()
command -v sudo >/dev/null 2>&1 || missing+=(sudo)
[ -x /lib/systemd/systemd ] || missing+=(systemd)
command -v mariadb-install-db >/dev/null 2>&1 || die "MariaDB is not installed (tests/install-db.sh)"
command -v mariabackup >/dev/null 2>&1 || die "mariabackup is not installed (tests/install-db.sh)"
if [ ${#missing[@]} -gt 0 ]; then
    say "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
for tool in unshare nsenter curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is missing"
done

target_dir=$(cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
debs=("$target_dir"/packages/*.deb)
[ ${#debs[@]} -eq 1 ] && [ -f "${debs[0]}" ] ||
    die "no DEB in $target_dir/packages/: run tests/packages.sh first"
deb=${debs[0]}

if dpkg-query -W -f '${Status}' myhoard 2>/dev/null | grep -q 'installed'; then
    die "a myhoard package is already installed here; this test would replace and purge it"
fi
[ ! -e /var/lib/myhoard ] || die "/var/lib/myhoard exists; this test would remove it"

# --- teardown, whatever happens -----------------------------------------------------------------

# On the host's disk; inside the namespaces /tmp and /var/tmp are other file systems.
work=$(mktemp -d /root/myhoard-systemd.XXXXXX)
init_pid=
unshare_pid=
installed=no
cleanup() {
    local status=$?
    if [ $status -ne 0 ] && [ -n "$init_pid" ] && kill -0 "$init_pid" 2>/dev/null; then
        say "the journal inside, for the failure above:"
        nsenter -t "$init_pid" -a journalctl --no-pager -n 200 -o short-precise 2>&1 | indent || true
    fi
    # SIGKILL to the namespace's PID 1 ends every process inside; the mounts go with it. (Only
    # while it is still unshare's child: a PID can be reused once its process is gone.)
    if [ -n "$init_pid" ] && [ "$(ps -o ppid= -p "$init_pid" | tr -d ' ')" = "$unshare_pid" ]; then
        kill -KILL "$init_pid" 2>/dev/null || true
    fi
    if [ -n "$unshare_pid" ]; then wait "$unshare_pid" 2>/dev/null || true; fi
    if [ "$installed" = yes ]; then
        say "dpkg --purge myhoard"
        dpkg --purge myhoard >/dev/null || status=1
    fi
    rm -rf /var/lib/myhoard "$work"
    exit "$status"
}
trap cleanup EXIT

say "apt-get install $deb"
installed=yes
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$deb" >/dev/null

# --- boot systemd in namespaces of its own ------------------------------------------------------

# PID 1 of the new namespaces runs this, then becomes systemd.
cat >"$work/boot" <<'EOF'
#!/bin/bash
set -euo pipefail
# Fresh, private file systems where systemd and the services write (the mount points are the
# packages' own directories; made if a minimal image lacks them).
mkdir -p /var/log/journal /var/lib/mysql
mount -t tmpfs -o mode=1777 tmpfs /tmp
mount -t tmpfs -o mode=1777 tmpfs /var/tmp
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=2755 tmpfs /var/log/journal
mount -t tmpfs -o "mode=0750,uid=$(id -u mysql),gid=$(id -g mysql)" tmpfs /var/lib/mysql
# Private copies of the configuration the test changes.
for dir in /etc/systemd/system /etc/sudoers.d /etc/mysql /etc/myhoard; do
    copy=/run/myhoard-test-etc$dir
    mkdir -p "$copy"
    cp -a "$dir/." "$copy/"
    mount --bind "$copy" "$dir"
done
# Units that would reach the host through the shared kernel, or that have no business here.
for unit in systemd-sysctl.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount \
    proc-sys-fs-binfmt_misc.mount systemd-modules-load.service systemd-remount-fs.service \
    sys-kernel-debug.mount sys-kernel-tracing.mount sys-kernel-config.mount dev-hugepages.mount \
    sys-fs-fuse-connections.mount systemd-timesyncd.service systemd-hwdb-update.service \
    systemd-random-seed.service ldconfig.service systemd-firstboot.service \
    systemd-machine-id-commit.service systemd-pstore.service systemd-repart.service \
    e2scrub_reap.service apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
    man-db.timer logrotate.timer fstrim.timer e2scrub_all.timer; do
    ln -sf /dev/null "/etc/systemd/system/$unit"
done
# Boot to a target of our own: just what the services' default dependencies (sysinit.target)
# pull in, no timers, no getty.
cat >/etc/systemd/system/myhoard-test.target <<'UNIT'
[Unit]
Description=myhoard systemd test
Requires=sysinit.target
After=sysinit.target
UNIT
export container=myhoard-test
exec /lib/systemd/systemd --system --unit=myhoard-test.target --log-target=journal-or-kmsg
EOF
chmod 0755 "$work/boot"

say "booting systemd as PID 1 of new PID, mount, network and UTS namespaces"
unshare --pid --fork --mount --net --uts --propagation private --mount-proc \
    "$work/boot" >"$work/boot.log" 2>&1 &
unshare_pid=$!
for _ in $(seq 1 100); do
    init_pid=$(pgrep -P "$unshare_pid" | head -n 1 || true)
    [ -n "$init_pid" ] && break
    sleep 0.1
done
[ -n "$init_pid" ] || die "the namespace's PID 1 did not appear: $(cat "$work/boot.log")"

inside() { nsenter -t "$init_pid" -a "$@"; }
# (Pipelines from journalctl end in a grep without -q, or sed: under pipefail an early exit of the
# reader would fail them with SIGPIPE.)
journal() { inside journalctl --no-pager "$@"; }
show() { inside systemctl show -p "$2" --value "$1"; }

state=
for _ in $(seq 1 120); do
    state=$(inside systemctl is-system-running 2>/dev/null || true)
    case $state in running | degraded) break ;; esac
    kill -0 "$init_pid" 2>/dev/null || die "systemd exited during boot: $(cat "$work/boot.log")"
    sleep 0.5
done
case $state in
    running) say "systemd $(inside systemctl --version | head -n 1 | cut -d' ' -f2) is up" ;;
    *)
        inside systemctl --failed --no-pager 2>&1 | indent || true
        die "systemd did not finish booting (state '$state')"
        ;;
esac

# --- MariaDB under Debian's own unit -----------------------------------------------------------

password=$(python3 -c 'import json; print(json.load(open("/etc/myhoard/myhoard.json"))["mysql"]["client_params"]["password"])')

# What myhoard needs of the server (its config's binlog and relay log paths), as an operator adds
# it to Debian's configuration.
server_cnf() {
    inside tee /etc/mysql/mariadb.conf.d/60-myhoard.cnf >/dev/null <<EOF
[mysqld]
server-id=$1
log-bin=/var/lib/mysql/binlog
log-bin-index=/var/lib/mysql/binlog.index
binlog-format=ROW
relay-log=/var/lib/mysql/relay
relay-log-index=/var/lib/mysql/relay.index
gtid-strict-mode=ON
log-slave-updates=ON
skip-slave-start
innodb-buffer-pool-size=128M
EOF
}

# The package's examples, installed with the README's commands as written. The unit is reached as
# mysql.service (the config's systemd_service) through the alias `systemctl enable` creates, as
# Debian's mariadb-server package does; the drop-in under that name applies to it.
inside install -m 0440 /usr/share/doc/myhoard/examples/sudoers.d-myhoard /etc/sudoers.d/myhoard
inside visudo -cf /etc/sudoers.d/myhoard >/dev/null || die "visudo rejects the packaged sudoers example"
inside install -D -m 0644 /usr/share/doc/myhoard/examples/mysqld-override.conf \
    /etc/systemd/system/mysql.service.d/myhoard.conf
inside systemctl enable mariadb.service >/dev/null 2>&1
inside systemctl daemon-reload
case $(show mariadb DropInPaths) in
    *mysql.service.d/myhoard.conf*) ;;
    *) die "the drop-in under mysql.service.d does not apply to mariadb.service" ;;
esac

sql() { inside mariadb --batch --skip-column-names -e "$1"; }

# An empty server. The config's account is root over TCP; Debian's root is unix_socket only, so it
# gets the config's password as a second way in (debian-start and this script keep using the
# socket).
say "starting mariadb.service (as mysql.service) on an empty data directory"
server_cnf 1
inside mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
inside systemctl start mysql
inside mariadb -e "ALTER USER root@localhost
    IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('$password')"
sql 'SELECT VERSION()' | indent

# --- myhoard.service ----------------------------------------------------------------------------

config=/etc/myhoard/myhoard.json
api=http://127.0.0.1:16001
edit_config() {
    inside python3 -c 'import json, sys
path, code = sys.argv[1], sys.argv[2]
config = json.load(open(path))
exec(code)
with open(path, "w") as f:
    json.dump(config, f, indent=4)' "$config" "$1"
}
api_get() { inside curl -sS --fail-with-body "$api$1"; }
api_send() { inside curl -sS --fail-with-body -w '\n' -X "$1" -d "$3" "$api$2"; }
json() { python3 -c "import json, sys; d = json.load(sys.stdin); print($1)"; }
wait_for() {
    local what=$1 seconds=$2 check=$3
    for _ in $(seq 1 "$seconds"); do
        if eval "$check"; then return 0; fi
        sleep 1
    done
    die "timed out after ${seconds}s waiting for $what"
}

say "systemctl start myhoard (returns once the daemon sent READY=1)"
inside systemctl start myhoard
[ "$(show myhoard ActiveState)/$(show myhoard SubState)" = active/running ] ||
    die "myhoard is $(show myhoard ActiveState)/$(show myhoard SubState) after start"
main_pid=$(show myhoard MainPID)
user=$(inside ps -o user= -p "$main_pid" | tr -d ' ')
[ "$user" = mysql ] || die "the daemon runs as '$user', expected mysql"
status_text=$(show myhoard StatusText)
[ "$status_text" = "mode idle" ] || die "StatusText is '$status_text', expected 'mode idle'"
owner=$(inside stat -c '%U:%G %a' /var/lib/myhoard /var/lib/myhoard/state | tr '\n' ' ')
[ "$owner" = "mysql:mysql 750 mysql:mysql 750 " ] ||
    die "StateDirectory= made /var/lib/myhoard and state/ '$owner', expected mysql:mysql 750"
say "active/running as mysql (pid $main_pid), StatusText '$status_text', /var/lib/myhoard mysql:mysql 0750"

say "PUT /status {\"mode\": \"active\"}: the first backup"
api_send PUT /status '{"mode": "active"}' | indent
wait_for "StatusText 'mode active'" 60 '[ "$(show myhoard StatusText)" = "mode active" ]'
completed_backups() { api_get /backup | json 'len([b for b in (d["backups"] or []) if b["completed_at"]])'; }
wait_for "a completed backup" 180 '[ "$(completed_backups)" -ge 1 ]'
stream_id=$(api_get /backup | json '[b for b in d["backups"] if b["completed_at"]][0]["stream_id"]')
say "backup $stream_id completed"

say "writing data after the backup; its binlog is uploaded"
sql "CREATE DATABASE shop;
     CREATE TABLE shop.orders (id INT PRIMARY KEY AUTO_INCREMENT, item VARCHAR(64), qty INT);
     INSERT INTO shop.orders (item, qty) VALUES ('lamp', 2), ('desk', 1), ('chair', 4);
     UPDATE shop.orders SET qty = qty + 1 WHERE item = 'desk';"
for i in $(seq 1 50); do sql "INSERT INTO shop.orders (item, qty) VALUES ('item-$i', $i)"; done
api_send POST /backup '{"backup_type": "binlog", "wait_for_upload": 60}' | indent
source_checksum=$(sql 'CHECKSUM TABLE shop.orders' | cut -f2)
source_gtids=$(sql 'SELECT @@gtid_binlog_pos')
say "source: CHECKSUM TABLE shop.orders = $source_checksum, gtid_binlog_pos $source_gtids"

# --- reload -------------------------------------------------------------------------------------

say "systemctl reload with an invalid config: refused by ExecReload, the daemon runs on"
inside cp "$config" /run/valid.json
edit_config 'config["backup_settings"]["backup_hour"] = 25'
if inside systemctl reload myhoard 2>"$work/reload.err"; then
    die "systemctl reload succeeded with backup_hour 25"
fi
indent <"$work/reload.err"
[ "$(show myhoard ActiveState)" = active ] && [ "$(show myhoard MainPID)" = "$main_pid" ] ||
    die "myhoard did not keep running after the refused reload"
journal -u myhoard -o cat | grep 'backup_hour' >/dev/null ||
    die "the journal does not say why the reload was refused (backup_hour)"

say "SIGHUP straight to the daemon with the invalid config: it logs why and runs on"
inside systemctl kill -s HUP --kill-whom=main myhoard
wait_for "the daemon's refusal in the journal" 10 \
    'journal -u myhoard -o cat | grep "SIGHUP: .* is not a valid configuration" >/dev/null'
[ "$(show myhoard MainPID)" = "$main_pid" ] || die "the daemon restarted after SIGHUP with an invalid config"
api_get /status | grep -q '"active"' || die "the API does not answer after the refused SIGHUP"

say "systemctl reload with a valid changed config: applied"
inside cp /run/valid.json "$config"
edit_config 'config["backup_settings"]["backup_hour"] = 4'
inside systemctl reload myhoard
wait_for "the reload in the journal" 30 \
    'journal -u myhoard -o cat | grep "configuration changed (.*backup_hour" >/dev/null'
wait_for "the reloaded daemon to answer" 30 'api_get /status 2>/dev/null | grep -q "\"active\""'
[ "$(show myhoard MainPID)" = "$main_pid" ] || die "reload restarted the process (MainPID changed)"
[ "$(show myhoard ActiveState)" = active ] || die "myhoard is not active after reload"

# --- journald -----------------------------------------------------------------------------------

say "journald: priorities and secrets"
priorities=$(journal -u myhoard -o json |
    python3 -c 'import json, sys
seen = {}
for line in sys.stdin:
    entry = json.loads(line)
    if entry.get("_COMM") == "myhoard":
        seen.setdefault(entry["PRIORITY"], entry["MESSAGE"])
for priority in sorted(seen):
    print(priority, seen[priority])')
indent <<<"$priorities"
grep -q '^3 ' <<<"$priorities" || die "no error-priority (3) line from the daemon (the refused SIGHUP is one)"
grep -q '^6 ' <<<"$priorities" || die "no info-priority (6) line from the daemon"
warnings=$(journal -u myhoard -p warning -o cat)
grep -q 'is not a valid configuration' <<<"$warnings" || die "journalctl -p warning lacks the refused SIGHUP"
if grep -q 'configuration changed' <<<"$warnings"; then
    die "journalctl -p warning shows info lines: the priority prefixes are not reaching journald"
fi
# The journal's own timestamps are enough: the daemon adds none of its own under journald.
first=$(journal -u myhoard -o cat _COMM=myhoard | sed -n 1p)
if grep -qE '^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:' <<<"$first"; then
    die "log lines carry their own timestamp under journald: $first"
fi
private_key_line=$(inside python3 -c 'import json; k = json.load(open("/etc/myhoard/myhoard.json"))["backup_sites"]["default"]["encryption_keys"]["private"]; print(k.splitlines()[5])')
everything=$(journal -o cat)
for secret in "$password" "$private_key_line"; do
    if grep -qF -- "$secret" <<<"$everything"; then
        die "a secret from the config appears in the journal"
    fi
done

# --- restore onto an emptied server -------------------------------------------------------------

# A restore needs a missing or empty data directory (as MyHoard's does) and starts mysqld itself.
say "a new server: myhoard and mariadb stopped, the data directory emptied, myhoard's state gone"
inside systemctl stop myhoard
[ "$(show myhoard Result)" = success ] && [ "$(show myhoard ExecMainStatus)" = 0 ] ||
    die "myhoard did not stop cleanly: Result=$(show myhoard Result) status $(show myhoard ExecMainStatus)"
inside systemctl stop mysql
inside find /var/lib/mysql /var/lib/myhoard/state -mindepth 1 -delete
server_cnf 2
edit_config 'config["server_id"] = 2'
inside systemctl start myhoard
[ "$(show myhoard StatusText)" = "mode idle" ] || die "the new node's daemon is not idle"

say "PUT /status {\"mode\": \"restore\", \"stream_id\": \"$stream_id\"}"
api_send PUT /status "{\"mode\": \"restore\", \"site\": \"default\", \"stream_id\": \"$stream_id\"}" | indent
phase=
restore_done() {
    local mode
    mode=$(api_get /status | json 'd["mode"]')
    if [ "$mode" = restore ]; then
        local now
        now=$(api_get /status/restore | json 'd.get("phase")')
        if [ "$now" != "$phase" ]; then
            say "  phase $now"
            phase=$now
        fi
        [ "$now" != failed ] || die "the restore failed: $(api_get /status/restore)"
        return 1
    fi
    [ "$mode" = observe ] || die "mode $mode after the restore, expected observe"
}
wait_for "the restore to complete (mode observe)" 300 restore_done
say "restore complete: mode observe"

[ "$(show mariadb ActiveState)" = active ] || die "mariadb is not running after the restore"
journal -o cat _COMM=sudo | grep 'COMMAND=/usr/bin/systemctl restart mysql' >/dev/null ||
    die "the journal shows no 'sudo systemctl restart mysql' by the daemon"
if inside grep -s MYSQLD_OPTS /etc/systemd/system/mysql.environment | grep -q '[^=]$'; then
    die "the restore left mysqld options in mysql.environment"
fi
restored_checksum=$(sql 'CHECKSUM TABLE shop.orders' | cut -f2)
restored_gtids=$(sql 'SELECT @@gtid_binlog_pos')
say "restored: CHECKSUM TABLE shop.orders = $restored_checksum, gtid_binlog_pos $restored_gtids"
[ "$restored_checksum" = "$source_checksum" ] || die "restored checksum $restored_checksum, source $source_checksum"
[ "$restored_gtids" = "$source_gtids" ] || die "restored GTIDs $restored_gtids, source $source_gtids"

# --- an invalid config at start -----------------------------------------------------------------

# systemd retries a start that ExecStartPre= refused (RestartPreventExitStatus= only covers the
# main process); the unit's start limit has to end that.
say "an invalid config: ExecStartPre refuses to start, and the start limit ends the retries"
inside systemctl stop myhoard
inside cp "$config" /run/valid.json
edit_config 'config["http_port"] = "sixteen"'
if inside systemctl start myhoard 2>/dev/null; then
    die "myhoard started with an invalid config"
fi
journal -u myhoard -o cat | grep 'http_port: must be' >/dev/null ||
    die "the journal does not say which key is invalid"
wait_for "the start limit (five starts, RestartSec=10s)" 120 \
    'journal -u myhoard -o cat | grep "Start request repeated too quickly" >/dev/null'
restarts=$(show myhoard NRestarts)
sleep 15
[ "$(show myhoard NRestarts)" = "$restarts" ] && [ "$(show myhoard ActiveState)" = failed ] ||
    die "systemd still restarts myhoard after the start limit"
say "failed for good after $restarts restarts (start request repeated too quickly)"

say "the config fixed: reset-failed and start, and the daemon resumes in observe"
inside cp /run/valid.json "$config"
inside systemctl reset-failed myhoard
inside systemctl start myhoard
[ "$(show myhoard StatusText)" = "mode observe" ] ||
    die "after the fix the daemon reports '$(show myhoard StatusText)', expected 'mode observe'"

say "OK: under systemd the packaged unit starts when ready, runs as mysql in its state directory, reloads (refusing invalid configs), logs with priorities and without secrets, backs up, restores onto an emptied server restarting mariadb through sudo, and stops retrying an invalid config"
