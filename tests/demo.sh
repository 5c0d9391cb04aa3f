#!/usr/bin/env bash
# The main job, end to end, on a fresh Debian bookworm machine (run as root):
#
#   1. installs MariaDB 10.11 (tests/install-db.sh) and builds myhoard;
#   2. starts a source MariaDB server and myhoard next to it, in active mode, with the
#      local-filesystem storage default: myhoard takes a full snapshot;
#   3. writes data, notes the time, then makes an "accident" (deletes rows);
#   4. rotates the binlog and waits until it is uploaded;
#   5. starts a second myhoard for an empty second server and asks for a point-in-time restore
#      to the noted time, through the HTTP API, as an operator would with curl;
#   6. checks that the restored server's tables equal the source's at that time.
#
# Everything lives under ${DEMO_DIR:-/tmp/myhoard-demo}; servers it started are stopped at the
# end, whatever happens.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
demo=${DEMO_DIR:-/tmp/myhoard-demo}
say() { printf '\n== %s\n' "$*"; }

say "installing MariaDB and building myhoard"
"$repo/tests/install-db.sh" >/dev/null
if ! command -v curl >/dev/null || ! command -v openssl >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q curl openssl >/dev/null
fi
if ! command -v cargo >/dev/null; then
    echo "cargo is needed (Rust 1.95 or later)" >&2
    exit 1
fi
(cd "$repo" && cargo build --release --locked --quiet)
myhoard=${CARGO_TARGET_DIR:-$repo/target}/release/myhoard

pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for server in a b; do
        if [[ -f $demo/$server/mysqld.pid ]]; then kill "$(cat "$demo/$server/mysqld.pid")" 2>/dev/null || true; fi
    done
    sleep 2
}
trap cleanup EXIT

rm -rf "$demo"
mkdir -p "$demo/backups"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# One MariaDB instance: my.cnf, data directory, binlogs and relay logs under $demo/<name>.
make_server() {
    local name=$1 server_id=$2 port=$3 dir=$demo/$1
    mkdir -p "$dir/data" "$dir/binlog" "$dir/relay" "$dir/tmp"
    cat >"$dir/my.cnf" <<EOF
[mysqld]
user=root
datadir=$dir/data
tmpdir=$dir/tmp
port=$port
bind-address=127.0.0.1
socket=$dir/mysqld.sock
pid-file=$dir/mysqld.pid
log-error=$dir/mysqld.err
server-id=$server_id
log-bin=$dir/binlog/binlog
log-bin-index=$dir/binlog/binlog.index
binlog-format=ROW
gtid-strict-mode=ON
log-slave-updates=ON
relay-log=$dir/relay/relay
relay-log-index=$dir/relay/relay.index
skip-slave-start
relay-log-recovery=OFF
innodb-buffer-pool-size=128M
EOF
}

config_for() {
    local name=$1 server_id=$2 port=$3 http_port=$4 dir=$demo/$1
    mkdir -p "$dir/state" "$dir/work"
    python3 - "$repo/etc/myhoard.json" "$dir" "$server_id" "$port" "$http_port" "$demo/backups" <<'EOF' >"$dir/myhoard.json"
import json, sys
example, d, server_id, port, http_port, backups = sys.argv[1:]
config = json.load(open(example))
config["backup_sites"]["default"]["object_storage"] = {"storage_type": "local", "directory": backups}
config["backup_settings"]["forced_binlog_rotation_interval"] = 10
config["binlog_purge_settings"]["enabled"] = False
config["http_port"] = int(http_port)
config["server_id"] = int(server_id)
config["mysql"] = {
    "binlog_prefix": f"{d}/binlog/binlog",
    "client_params": {"host": "127.0.0.1", "port": int(port), "user": "root", "password": "demo", "require_ssl": False},
    "config_file_name": f"{d}/my.cnf",
    "data_directory": f"{d}/data",
    "relay_log_index_file": f"{d}/relay/relay.index",
    "relay_log_prefix": f"{d}/relay/relay",
}
config["state_directory"] = f"{d}/state"
config["temporary_directory"] = f"{d}/work"
config["start_command"] = ["/usr/sbin/mariadbd", f"--defaults-file={d}/my.cnf"]
for key in ("systemd_service", "systemctl_command", "systemd_env_update_command"):
    config.pop(key, None)
print(json.dumps(config, indent=2))
EOF
    chmod 600 "$dir/myhoard.json"
}

sql() { mariadb --no-defaults -uroot -pdemo -h127.0.0.1 -P"$1" -N -B -e "$2"; }
api() { curl -sS --fail-with-body -X "$1" "http://127.0.0.1:$2$3" ${4:+-H 'Content-Type: application/json' -d "$4"}; echo; }
wait_for() { # seconds, description, command...
    local seconds=$1 what=$2; shift 2
    for _ in $(seq "$seconds"); do if "$@" >/dev/null 2>&1; then return 0; fi; sleep 1; done
    echo "timed out waiting for $what" >&2; return 1
}

port_a=$(free_port); port_b=$(free_port); http_a=$(free_port); http_b=$(free_port)
make_server a 1 "$port_a"
make_server b 2 "$port_b"
config_for a 1 "$port_a" "$http_a"
config_for b 2 "$port_b" "$http_b"

say "starting the source server (MariaDB, port $port_a)"
mariadb-install-db --no-defaults --user=root --datadir="$demo/a/data" --auth-root-authentication-method=normal --skip-test-db >/dev/null
/usr/sbin/mariadbd --defaults-file="$demo/a/my.cnf" &
wait_for 60 "the source server" mariadb --no-defaults -uroot -S "$demo/a/mysqld.sock" -e 'SELECT 1'
mariadb --no-defaults -uroot -S "$demo/a/mysqld.sock" -e "SET PASSWORD FOR root@localhost = PASSWORD('demo'); CREATE USER IF NOT EXISTS root@'127.0.0.1'; ALTER USER root@'127.0.0.1' IDENTIFIED BY 'demo'; GRANT ALL ON *.* TO root@'127.0.0.1' WITH GRANT OPTION;"
sql "$port_a" "CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY AUTO_INCREMENT, item VARCHAR(40), qty INT)"
sql "$port_a" "USE shop; INSERT INTO orders (item, qty) SELECT CONCAT('item-', seq), seq % 7 FROM seq_1_to_5000"

say "starting myhoard for the source and switching it to active"
"$myhoard" run --config "$demo/a/myhoard.json" >"$demo/a/myhoard.log" 2>&1 &
pids+=($!)
wait_for 30 "myhoard (source)" curl -sf "http://127.0.0.1:$http_a/status"
api PUT "$http_a" /status '{"mode": "active"}'
echo "waiting for the first full backup to complete..."
wait_for 300 "a completed backup" sh -c "curl -sf http://127.0.0.1:$http_a/backup | grep -q '\"completed_at\":[0-9]'"
api GET "$http_a" /backup | python3 -c 'import json,sys; b=json.load(sys.stdin)["backups"][0]; print("backup", b["stream_id"], "binlog", b["basebackup_info"]["binlog_name"], "gtid", b["basebackup_info"]["gtid"])'

say "writing more data after the backup"
for i in $(seq 1 20); do sql "$port_a" "INSERT INTO shop.orders (item, qty) VALUES ('late-$i', $i); UPDATE shop.orders SET qty = qty + 1 WHERE id % 50 = $i"; done
sleep 1.2
target_time=$(date +%s)
expected=$(sql "$port_a" "CHECKSUM TABLE shop.orders EXTENDED" | cut -f2)
rows=$(sql "$port_a" "SELECT COUNT(*) FROM shop.orders")
echo "point in time to restore to: $target_time ($(date -u -d "@$target_time" +%FT%TZ)), $rows rows, checksum $expected"
sleep 1.2

say "the accident: rows deleted after that point"
sql "$port_a" "DELETE FROM shop.orders WHERE id % 3 = 0"
echo "rows now on the source: $(sql "$port_a" "SELECT COUNT(*) FROM shop.orders")"
api POST "$http_a" /backup '{"backup_type": "binlog", "wait_for_upload": 30}'

say "restoring onto the second server (empty data directory) with a second myhoard"
"$myhoard" run --config "$demo/b/myhoard.json" >"$demo/b/myhoard.log" 2>&1 &
pids+=($!)
wait_for 30 "myhoard (target)" curl -sf "http://127.0.0.1:$http_b/status"
wait_for 60 "the backup list" sh -c "curl -sf http://127.0.0.1:$http_b/backup | grep -q stream_id"
stream_id=$(curl -sf "http://127.0.0.1:$http_b/backup" | python3 -c 'import json,sys; print(json.load(sys.stdin)["backups"][0]["stream_id"])')
api PUT "$http_b" /status "{\"mode\": \"restore\", \"site\": \"default\", \"stream_id\": \"$stream_id\", \"target_time\": $target_time}"
last=""
for _ in $(seq 600); do
    mode=$(curl -sf "http://127.0.0.1:$http_b/status" | python3 -c 'import json,sys; print(json.load(sys.stdin)["mode"])')
    [[ $mode == observe ]] && break
    phase=$(curl -sf "http://127.0.0.1:$http_b/status/restore" | python3 -c 'import json,sys; print(json.load(sys.stdin)["phase"])' 2>/dev/null || true)
    if [[ $phase != "$last" ]]; then echo "restore phase: $phase"; last=$phase; fi
    if [[ $phase == failed* ]]; then echo "restore failed; see $demo/b/myhoard.log" >&2; exit 1; fi
    sleep 1
done
[[ $mode == observe ]] || { echo "the restore did not finish; see $demo/b/myhoard.log" >&2; exit 1; }
echo "restore completed; myhoard switched itself to observe mode"

say "checking the restored data"
restored=$(sql "$port_b" "CHECKSUM TABLE shop.orders EXTENDED" | cut -f2)
restored_rows=$(sql "$port_b" "SELECT COUNT(*) FROM shop.orders")
echo "source at the target time: $rows rows, checksum $expected"
echo "restored server:           $restored_rows rows, checksum $restored"
if [[ $restored == "$expected" && $restored_rows == "$rows" ]]; then
    echo "OK: the restored server holds exactly the source's data at the target time"
else
    echo "MISMATCH" >&2
    exit 1
fi
