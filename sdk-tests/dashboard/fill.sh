#!/usr/bin/env bash
# Makes a large SQLite store for bench.mjs: N completed instances (default 1,000,000), plus one
# failed per thousand and 100 running, written straight into the schema `outrigger migrate`
# creates (rows shaped like real ones: ids, name, payloads, custom status, times; no history,
# which the list never reads). Seconds instead of the half hour the bench's `fill` workload
# takes through the protocol.
#
#   sdk-tests/dashboard/fill.sh /tmp/dash1m.db [N]
set -euo pipefail
db=${1:?usage: fill.sh PATH [N]}
n=${2:-1000000}
bin=${OUTRIGGER_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/target/release/outrigger}
rm -f "$db" "$db-wal" "$db-shm"
"$bin" migrate --database-url "sqlite://$db" >/dev/null
sqlite3 "$db" <<SQL
PRAGMA journal_mode = WAL;
PRAGMA synchronous = OFF;
BEGIN;
WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < $n - 1)
INSERT INTO instances (instance_id, name, execution_id, status, input, output, custom_status,
                       created_at, updated_at, completed_at)
SELECT printf('fill-%07d', i), 'Fill', lower(hex(randomblob(16))), 1, '"in"', '"out"',
       printf('"stage %d"', i % 10), 1790000000000 + i * 10, 1790000000000 + i * 10 + 5,
       1790000000000 + i * 10 + 5
FROM k;
WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < $n / 1000 - 1)
INSERT INTO instances (instance_id, name, execution_id, status, input, created_at, updated_at, completed_at)
SELECT printf('failed-%07d', i), 'Fill', lower(hex(randomblob(16))), 3, '"in"',
       1790000000000 + i * 10000 + 3, 1790000000000 + i * 10000 + 9, 1790000000000 + i * 10000 + 9
FROM k;
WITH RECURSIVE k(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM k WHERE i < 99)
INSERT INTO instances (instance_id, name, execution_id, status, input, created_at, updated_at)
SELECT printf('running-%03d', i), 'Fill', lower(hex(randomblob(16))), 0, '"in"',
       1790000000000 + i * 100000 + 7, 1790000000000 + i * 100000 + 7
FROM k;
COMMIT;
SQL
echo "$db: $(sqlite3 "$db" 'SELECT COUNT(*) FROM instances') instances, $(du -h "$db" | cut -f1)"
