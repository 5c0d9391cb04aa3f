#!/usr/bin/env bash
# Regenerates the MariaDB binlog fixtures in this directory from a throwaway mariadbd
# (see README.md). Needs mariadbd, mariadb-install-db, mariadb and mariadb-binlog on PATH.
# Writes binlog.00000N and events-binlog.00000N.txt (the server's own SHOW BINLOG EVENTS),
# which the unit tests take their expected values from.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/myhoard-binlog-fixtures.XXXXXX)
D=$work/a
port=$((20000 + RANDOM % 20000))
mkdir -p "$D"/{data,binlog,tmp}
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT

mariadb-install-db --no-defaults --user=root --datadir="$D/data" \
    --auth-root-authentication-method=normal --skip-test-db >"$work/install.log" 2>&1
start() {
    mariadbd --no-defaults --user=root --datadir="$D/data" --tmpdir="$D/tmp" \
        --port=$port --bind-address=127.0.0.1 --socket="$D/mysqld.sock" \
        --pid-file="$D/mysqld.pid" --log-error="$D/mysqld.err" --server-id=1 \
        --log-bin="$D/binlog/binlog" --log-bin-index="$D/binlog/binlog.index" \
        --binlog-format=ROW --gtid-strict-mode=ON --log-slave-updates=ON \
        --innodb-buffer-pool-size=64M "$@" &
    pid=$!
    for _ in $(seq 1 200); do
        mariadb --no-defaults -uroot -S "$D/mysqld.sock" -e 'select 1' >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "mariadbd did not start" >&2
    tail -20 "$D/mysqld.err" >&2
    exit 1
}
stop() {
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    pid=
}
q() { mariadb --no-defaults -uroot -S "$D/mysqld.sock" -N "$@"; }

start
# binlog.000001: DDL, autocommit and multi-statement InnoDB transactions, MyISAM (Query
# COMMIT), statement format, a second domain and a second server_id, XA, a rollback that
# leaves no GTID.
q <<'SQL'
CREATE DATABASE db1;
USE db1;
CREATE TABLE t (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(200)) ENGINE=InnoDB;
CREATE TABLE m (id INT PRIMARY KEY AUTO_INCREMENT, v VARCHAR(200)) ENGINE=MyISAM;
INSERT INTO t (v) VALUES ('a');
INSERT INTO t (v) VALUES ('b'), ('c');
BEGIN; INSERT INTO t (v) VALUES ('d'); UPDATE t SET v = 'bb' WHERE id = 2; COMMIT;
INSERT INTO m (v) VALUES ('myisam');
SET SESSION binlog_format = 'STATEMENT';
BEGIN; UPDATE t SET v = 'stmt' WHERE id = 1; INSERT INTO t (v) VALUES ('stmt2'); COMMIT;
SET SESSION binlog_format = 'ROW';
BEGIN; INSERT INTO t (v) VALUES ('rolled back'); ROLLBACK;
SET SESSION gtid_domain_id = 2;
INSERT INTO t (v) VALUES ('domain 2');
SET SESSION gtid_domain_id = 0;
SET SESSION server_id = 7;
INSERT INTO t (v) VALUES ('server 7');
SET SESSION server_id = 1;
XA START 'xa1'; INSERT INTO t (v) VALUES ('xa'); XA END 'xa1'; XA PREPARE 'xa1';
XA COMMIT 'xa1';
DELETE FROM t WHERE v = 'a';
FLUSH BINARY LOGS;
SQL
# binlog.000002: a large transaction (many row events, each under 8 KiB), then DDL.
q db1 <<'SQL'
BEGIN;
INSERT INTO t (v) SELECT REPEAT(CHAR(65 + seq % 26), 150) FROM seq_1_to_400;
COMMIT;
ALTER TABLE t ADD COLUMN w INT;
CREATE TABLE t2 (id INT PRIMARY KEY) ENGINE=InnoDB;
INSERT INTO t2 VALUES (1), (2), (3);
FLUSH BINARY LOGS;
SQL
# binlog.000003: without checksums (changing binlog_checksum rotates the binlog), ended by a
# server shutdown (STOP event).
q db1 -e "SET GLOBAL binlog_checksum = NONE"
q db1 <<'SQL'
INSERT INTO t (v) VALUES ('no checksum 1');
BEGIN; INSERT INTO t (v) VALUES ('no checksum 2'); INSERT INTO t2 VALUES (4); COMMIT;
DROP TABLE t2;
SQL
stop
# Restart: binlog.000005 is then the active file (Gtid_list and a checkpoint, no Rotate or
# Stop yet); it is copied while the server runs, as a file still being written would be.
start
q db1 -e "INSERT INTO t (v) VALUES ('active file')"
{
    q -e "SELECT @@gtid_binlog_pos, @@gtid_binlog_state"
    q -e "SHOW BINARY LOGS"
} >"$work/state.txt"
files=$(q -e "SHOW BINARY LOGS" | awk '{ print $1 }')
for f in $files; do
    q -e "SHOW BINLOG EVENTS IN '$f'" >"$work/events-$f.txt"
    cp "$D/binlog/$f" "$work/$f"
done
stop

rm -f "$here"/binlog.0* "$here"/events-binlog.0* "$here"/mariadb-binlog-binlog.0*
for f in $files; do
    cp "$work/$f" "$here/$f"
    cp "$work/events-$f.txt" "$here/events-$f.txt"
    # Offsets, header timestamps (UTC) and CRCs as the server's own tool decodes them.
    TZ=UTC mariadb-binlog --no-defaults "$work/$f" | grep -E '^# at |^#[0-9]{6} |^SET TIMESTAMP' \
        >"$here/mariadb-binlog-$f.txt" || true
done
cp "$work/state.txt" "$here/state.txt"
mariadbd --no-defaults --version >"$here/server-version.txt"
ls -l "$here"
