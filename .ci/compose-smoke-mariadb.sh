#!/bin/bash
# The entrypoint and healthcheck of .ci/compose-smoke's stand-in for the official mariadb image
# (no container registry is reachable there; the stand-in is Debian's mariadb-server). It keeps
# only the conventions docker-compose.yml uses:
#   MARIADB_ROOT_PASSWORD  root's password, root reachable over TCP from other containers
#   MARIADB_DATABASE       created on the first start
#   /docker-entrypoint-initdb.d/*.sql  run into that database on the first start
#   healthcheck.sh --connect --innodb_initialized
# The image installs this file twice, as docker-entrypoint.sh and healthcheck.sh; the name it is
# called by says which part runs.
set -euo pipefail

if [ "$(basename "$0")" = healthcheck.sh ]; then
  for test in "$@"; do
    case $test in
      # Over TCP, so that it fails while the first start runs without networking (as the
      # official check does); as root with its password, so that the server logs no denials.
      --connect) MYSQL_PWD=$MARIADB_ROOT_PASSWORD mariadb-admin --protocol=tcp --host=127.0.0.1 \
                   --user=root --connect-timeout=2 ping >/dev/null ;;
      # As root over the socket (unix_socket authentication: the check runs as root).
      --innodb_initialized)
        [ "$(mariadb --protocol=socket -N -B -e "SELECT 1 FROM information_schema.ENGINES
              WHERE ENGINE = 'InnoDB' AND SUPPORT IN ('YES', 'DEFAULT')")" = 1 ] ;;
      # Fail on any other test, so that a change of the compose file shows here.
      *) echo "healthcheck.sh (stand-in): $test is not supported" >&2; exit 2 ;;
    esac
  done
  exit 0
fi

: "${MARIADB_ROOT_PASSWORD:?the stand-in supports only MARIADB_ROOT_PASSWORD for root}"
database=${MARIADB_DATABASE:-}
if [ ! -d /var/lib/mysql/mysql ]; then
  echo "stand-in entrypoint: initialising /var/lib/mysql"
  mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
  # A first server without networking, as the official image runs its initialisation: no other
  # container (nor the --connect check) reaches the database before it is complete.
  mariadbd --user=mysql --skip-networking --socket=/run/mysqld/init.sock &
  pid=$!
  client=(mariadb --protocol=socket --socket=/run/mysqld/init.sock)
  for _ in $(seq 100); do "${client[@]}" -e 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
  # The password as an SQL string literal: backslashes and quotes escaped.
  password=${MARIADB_ROOT_PASSWORD//\\/\\\\}
  password=${password//\'/\\\'}
  # root@localhost keeps unix_socket (the healthcheck's way in) beside the password, as the
  # official image sets it; root@'%' is root from other containers.
  "${client[@]}" <<SQL
ALTER USER root@localhost IDENTIFIED VIA unix_socket OR mysql_native_password USING PASSWORD('$password');
CREATE USER root@'%' IDENTIFIED BY '$password';
GRANT ALL ON *.* TO root@'%' WITH GRANT OPTION;
${database:+CREATE DATABASE IF NOT EXISTS \`$database\`;}
SQL
  for script in /docker-entrypoint-initdb.d/*.sql; do
    [ -e "$script" ] || continue
    echo "stand-in entrypoint: running $script"
    "${client[@]}" ${database:+"$database"} < "$script"
  done
  kill "$pid"
  wait "$pid"
fi
# Debian's configuration binds 127.0.0.1; the official image listens on every address. It also
# skips name resolution (its docker.cnf): without that, every new connection waits for a reverse
# DNS lookup of the client's address, which on a container network can take seconds.
exec mariadbd --user=mysql --bind-address=0.0.0.0 --skip-name-resolve "$@"
