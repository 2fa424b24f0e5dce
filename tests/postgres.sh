#!/usr/bin/env bash
# Makes sure a Postgres server is reachable for the tests and prints, on stdout, the lines the
# caller should export:
#
#   OUTRIGGER_TEST_POSTGRES_URL=postgres://outrigger:outrigger@127.0.0.1:5432/postgres
#   OUTRIGGER_TEST_POSTGRES_CLUSTER=15 main      (only for a local cluster pg_ctlcluster can restart)
#
#   eval "$(tests/postgres.sh | sed 's/^/export /; s/=\(.*\)$/="\1"/')"   (or see test.sh)
#
# An OUTRIGGER_TEST_POSTGRES_URL already set and answering is used as it is. Otherwise, on a
# Debian machine (as root), Debian's `postgresql` package is installed if missing, its cluster
# is created if there is none and started if it is down, and a role `outrigger` (password
# `outrigger`, LOGIN CREATEDB) is created. Everything else goes to stderr; exits non-zero when no
# server can be had. Safe to run any number of times; fast when the server is already up.
#
# OUTRIGGER_TEST_POSTGRES_CLUSTER_NAME picks a cluster other than `main` (created when missing),
# e.g. to keep the restart test away from a cluster that other programs on the machine use.
set -euo pipefail

NAME=${OUTRIGGER_TEST_POSTGRES_CLUSTER_NAME:-main}
ROLE=outrigger
PASSWORD=outrigger

say() { echo "tests/postgres.sh: $*" >&2; }
die() { say "$*"; exit 1; }

# True when $1 accepts a login and answers a query.
answers() {
  PGCONNECT_TIMEOUT=5 psql "$1" -X -A -t -q -c 'select 1' >/dev/null 2>&1
}

apt_install() {
  command -v apt-get >/dev/null || die "no Postgres reachable and no apt-get to install one; set OUTRIGGER_TEST_POSTGRES_URL"
  [ "$(id -u)" -eq 0 ] || die "installing $* needs root; set OUTRIGGER_TEST_POSTGRES_URL instead"
  export DEBIAN_FRONTEND=noninteractive
  # A machine that never ran `apt-get update` has no package lists: the install would not find
  # the package. Stale lists can name versions the mirror no longer has: update and retry once.
  if ! apt-cache show "$@" >/dev/null 2>&1; then
    say "apt-get update"
    apt-get update -qq >&2 || die "apt-get update failed"
  fi
  say "apt-get install $*"
  if ! apt-get install -y -qq "$@" >&2; then
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq "$@" >&2 || die "apt-get install $* failed"
  fi
}

# The caller's own server, when it answers.
if [ -n "${OUTRIGGER_TEST_POSTGRES_URL:-}" ]; then
  command -v psql >/dev/null || apt_install postgresql-client
  if answers "$OUTRIGGER_TEST_POSTGRES_URL"; then
    echo "OUTRIGGER_TEST_POSTGRES_URL=$OUTRIGGER_TEST_POSTGRES_URL"
    if [ -n "${OUTRIGGER_TEST_POSTGRES_CLUSTER:-}" ]; then
      echo "OUTRIGGER_TEST_POSTGRES_CLUSTER=$OUTRIGGER_TEST_POSTGRES_CLUSTER"
    fi
    exit 0
  fi
  say "OUTRIGGER_TEST_POSTGRES_URL does not answer; using a local cluster instead"
fi

# A local Debian cluster. postgresql-client alone brings pg_lsclusters and psql but no server.
server_installed() { compgen -G '/usr/lib/postgresql/*/bin/postgres' >/dev/null; }
if ! server_installed || ! command -v pg_lsclusters >/dev/null; then
  apt_install postgresql
  server_installed || die "apt-get install postgresql brought no server binary"
fi

# "version cluster port status ..." of the newest version's cluster named $NAME.
find_cluster() {
  pg_lsclusters -h | awk -v name="$NAME" '$2 == name' | sort -k1,1V | tail -1
}

cluster=$(find_cluster)
if [ -z "$cluster" ]; then
  # The package creates `main` on a first install, unless createcluster.conf says not to or the
  # creation failed (it only warns then); other names are ours to create.
  version=$(compgen -G '/usr/lib/postgresql/*/bin/postgres' | cut -d/ -f5 | sort -V | tail -1)
  say "creating cluster $version $NAME"
  pg_createcluster "$version" "$NAME" >&2
  cluster=$(find_cluster)
  [ -n "$cluster" ] || die "pg_createcluster $version $NAME did not create a cluster"
fi
read -r version name port status _ <<<"$cluster"

if [[ "$status" != online* ]]; then
  say "starting cluster $version $name"
  # The package's own start is often refused (policy-rc.d in containers, no systemd): start
  # it directly.
  pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start >&2 \
    || die "pg_ctlcluster $version $name start failed; see /var/log/postgresql/postgresql-$version-$name.log"
fi

deadline=$((SECONDS + 60))
until pg_isready -q -h 127.0.0.1 -p "$port"; do
  [ "$SECONDS" -lt "$deadline" ] || die "cluster $version $name does not accept connections on port $port after 60 s"
  sleep 0.2
done

url="postgres://$ROLE:$PASSWORD@127.0.0.1:$port/postgres"
if ! answers "$url"; then
  [ "$(id -u)" -eq 0 ] || die "cannot log in as $ROLE, and creating the role needs root (to act as postgres)"
  say "creating role $ROLE"
  runuser -u postgres -- psql -X -q -v ON_ERROR_STOP=1 -p "$port" -d postgres >&2 <<SQL
DO \$\$
BEGIN
  IF EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    ALTER ROLE $ROLE WITH LOGIN CREATEDB PASSWORD '$PASSWORD';
  ELSE
    CREATE ROLE $ROLE WITH LOGIN CREATEDB PASSWORD '$PASSWORD';
  END IF;
END
\$\$;
SQL
  answers "$url" || die "still cannot log in as $ROLE on port $port (check pg_hba.conf for 127.0.0.1)"
fi

echo "OUTRIGGER_TEST_POSTGRES_URL=$url"
echo "OUTRIGGER_TEST_POSTGRES_CLUSTER=$version $name"
