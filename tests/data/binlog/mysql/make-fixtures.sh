#!/usr/bin/env bash
# Regenerates the MySQL 9.7 binlog fixtures in this directory from a throwaway mysqld (see
# README.md). Uses the wrappers tests/install-db.sh puts in <tools>/mysql97/bin.
# Writes binlog.00000N and events-binlog.00000N.txt (the server's own SHOW BINLOG EVENTS),
# which the unit tests take their expected values from.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../../.." && pwd)
bin=${MYHOARD_TEST_TOOLS:-$repo/.test-tools}/mysql97/bin
work=$(mktemp -d /tmp/myhoard-binlog-fixtures.XXXXXX)
D=$work/a
port=$((20000 + RANDOM % 20000))
mkdir -p "$D"/{binlog,tmp,files}
pid=
cleanup() {
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$bin/mysqld" --user=root --datadir="$D/data" --initialize-insecure \
    --innodb-redo-log-capacity=8M --log-error="$D/init.err"
start() {
    "$bin/mysqld" --user=root --datadir="$D/data" --server-id=1 --port=$port \
        --bind-address=127.0.0.1 --mysqlx=OFF --socket="$D/mysqld.sock" \
        --pid-file="$D/mysqld.pid" --log-error="$D/mysqld.err" --tmpdir="$D/tmp" \
        --secure-file-priv="$D/files" --log-bin="$D/binlog/binlog" \
        --log-bin-index="$D/binlog/binlog.index" --gtid-mode=ON \
        --enforce-gtid-consistency=ON --innodb-redo-log-capacity=8M \
        --innodb-buffer-pool-size=32M --performance-schema=OFF "$@" >"$D/stdout.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 400); do
        "$bin/mysqladmin" -uroot -S "$D/mysqld.sock" ping >/dev/null 2>&1 && return 0
        kill -0 $pid 2>/dev/null || break
        sleep 0.25
    done
    echo "mysqld did not start" >&2
    tail -20 "$D/mysqld.err" >&2
    exit 1
}
stop() {
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    pid=
}
q() { "$bin/mysql" -uroot -S "$D/mysqld.sock" -N "$@"; }

start
# binlog.000001: DDL, autocommit and multi-statement InnoDB transactions, MyISAM, statement
# format, tagged GTIDs (automatic and explicit), a GTID of another server UUID, XA, a rollback
# that leaves no GTID.
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
SET gtid_next = 'AUTOMATIC:tag1';
INSERT INTO t (v) VALUES ('tagged 1');
INSERT INTO t (v) VALUES ('tagged 2');
SET gtid_next = 'AUTOMATIC:tag_2';
BEGIN; INSERT INTO t (v) VALUES ('tagged 3'); INSERT INTO t (v) VALUES ('tagged 4'); COMMIT;
SET gtid_next = 'AUTOMATIC';
SET gtid_next = '11111111-2222-3333-4444-555555555555:7';
INSERT INTO t (v) VALUES ('other uuid');
SET gtid_next = '11111111-2222-3333-4444-555555555555:tagx:3';
INSERT INTO t (v) VALUES ('other uuid tagged');
SET gtid_next = 'AUTOMATIC';
XA START 'xa1'; INSERT INTO t (v) VALUES ('xa'); XA END 'xa1'; XA PREPARE 'xa1';
XA COMMIT 'xa1';
DELETE FROM t WHERE v = 'a';
FLUSH BINARY LOGS;
SQL
# binlog.000002: a large transaction (many row events), DDL, a compressed transaction
# (Transaction_payload event).
q db1 <<'SQL'
SET SESSION cte_max_recursion_depth = 10000;
BEGIN;
INSERT INTO t (v) WITH RECURSIVE s(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM s WHERE n < 400)
    SELECT REPEAT(CHAR(65 + n % 26), 150) FROM s;
COMMIT;
ALTER TABLE t ADD COLUMN w INT;
CREATE TABLE t2 (id INT PRIMARY KEY) ENGINE=InnoDB;
SET SESSION binlog_transaction_compression = ON;
INSERT INTO t2 VALUES (1), (2), (3);
SET SESSION binlog_transaction_compression = OFF;
INSERT INTO t2 VALUES (4);
FLUSH BINARY LOGS;
SQL
# binlog.000003: anonymous transactions (gtid_mode OFF_PERMISSIVE), then back to ON.
q db1 <<'SQL'
SET GLOBAL gtid_mode = ON_PERMISSIVE;
SET GLOBAL gtid_mode = OFF_PERMISSIVE;
INSERT INTO t2 VALUES (5);
BEGIN; INSERT INTO t2 VALUES (6); INSERT INTO t2 VALUES (7); COMMIT;
SET GLOBAL gtid_mode = ON_PERMISSIVE;
INSERT INTO t2 VALUES (8);
SET GLOBAL gtid_mode = ON;
INSERT INTO t2 VALUES (9);
FLUSH BINARY LOGS;
SQL
# The next file: without checksums (changing binlog_checksum rotates the binlog), ended by a
# server shutdown (STOP event).
q db1 -e "SET GLOBAL binlog_checksum = NONE"
q db1 <<'SQL'
INSERT INTO t (v) VALUES ('no checksum 1');
BEGIN; INSERT INTO t (v) VALUES ('no checksum 2'); INSERT INTO t2 VALUES (10); COMMIT;
DROP TABLE t2;
SQL
stop
# Restart: the last file is then the active one (no Rotate or Stop yet); it is copied while the
# server runs, as a file still being written would be.
start
q db1 -e "INSERT INTO t (v) VALUES ('active file')"
{
    q -e "SELECT @@server_uuid"
    q -e "SELECT REPLACE(@@gtid_executed, '\n', '')"
    q -e "SHOW BINARY LOGS"
} >"$work/state.txt"
files=$(q -e "SHOW BINARY LOGS" | awk '{ print $1 }')
for f in $files; do
    q -e "SHOW BINLOG EVENTS IN '$f'" >"$work/events-$f.txt"
    cp "$D/binlog/$f" "$work/$f"
done
stop

rm -f "$here"/binlog.0* "$here"/events-binlog.0* "$here"/mysqlbinlog-binlog.0*
for f in $files; do
    cp "$work/$f" "$here/$f"
    cp "$work/events-$f.txt" "$here/events-$f.txt"
    # Offsets, header timestamps (UTC), CRCs and commit timestamps as the server's own tool
    # decodes them.
    TZ=UTC "$bin/mysqlbinlog" "$work/$f" |
        grep -E '^# at |^#[0-9]{6} |immediate_commit_timestamp|GTID_NEXT' \
            >"$here/mysqlbinlog-$f.txt" || true
done
cp "$work/state.txt" "$here/state.txt"
"$bin/mysqld" --version | sed "s/.* Ver /Ver /" >"$here/server-version.txt"
ls -l "$here"
