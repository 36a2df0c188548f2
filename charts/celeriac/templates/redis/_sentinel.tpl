{{/*
Redis with Sentinel: the start-up scripts of the redis and sentinel containers (ConfigMap).
Every pod runs redis-server and a sentinel. Nothing is decided at render time about which pod
is the master: a (re)started pod asks the sentinels of the other pods, and only when none
knows a master does the first pod start as master (and the others as its replicas).
tests/chart/test_redis.py runs these scripts against real redis-server processes.
*/}}

{{/* Shared by both scripts (sourced): the settings, one per line, and the master lookup. */}}
{{- define "celeriac.redis.haScript" -}}
# Sourced by start-redis.sh and start-sentinel.sh.
set -eu
MASTER_NAME={{ .Values.redis.sentinel.masterName | squote }}
# Each pod's stable name through the headless Service, in ordinal order.
HOSTS={{ include "celeriac.redis.hosts" . | squote }}
REDIS_PORT=6379
SENTINEL_PORT=26379
QUORUM={{ include "celeriac.redis.quorum" . }}
DOWN_AFTER_MS={{ int .Values.redis.sentinel.downAfterMilliseconds }}
FAILOVER_TIMEOUT_MS={{ int .Values.redis.sentinel.failoverTimeoutMilliseconds }}
PASSWORD_FILE=/etc/redis-auth/password
CONFIG_DIR=/etc/redis
RUN_DIR=/tmp
SENTINEL_DIR=/etc/sentinel
# POD_NAME (Downward API) ends in the pod's ordinal.
ORDINAL="${POD_NAME##*-}"
SELF="$(printf '%s\n' $HOSTS | sed -n "$((ORDINAL + 1))p")"
FIRST="${HOSTS%% *}"
if [ -z "$SELF" ]; then
  echo "pod $POD_NAME has no name in HOSTS" >&2
  exit 1
fi
# redis-cli reads the password from REDISCLI_AUTH: never on a command line.
REDISCLI_AUTH="$(cat "$PASSWORD_FILE")"
export REDISCLI_AUTH

# "host port" of the master as the first reachable sentinel of another pod reports it; fails
# when none answers with one. This pod's own sentinel is not asked: it may be starting too and
# know only its own first guess.
sentinel_master() {
  for host in $HOSTS; do
    [ "$host" = "$SELF" ] && continue
    reply="$(timeout 3 redis-cli -h "$host" -p "$SENTINEL_PORT" SENTINEL get-master-addr-by-name "$MASTER_NAME" 2>/dev/null)" || continue
    # shellcheck disable=SC2086
    set -- $reply
    if [ "$#" -eq 2 ] && [ "$2" -gt 0 ] 2>/dev/null; then
      echo "$1 $2"
      return 0
    fi
  done
  return 1
}
{{- end -}}

{{- define "celeriac.redis.startRedis" -}}
. "$(dirname "$0")/ha.sh"
umask 077
master=""
if master="$(sentinel_master)"; then
  if [ "${master% *}" = "$SELF" ]; then
    # The sentinels still name this pod the master: it restarted before they noticed it was
    # gone. Starting as master now could hand its replicas a stale (or, without persistence,
    # empty) data set: wait for them to promote a replica. If none is promoted in time (no
    # replica left), this pod starts as the master with what it has.
    deadline=$(( $(date +%s) + (DOWN_AFTER_MS + FAILOVER_TIMEOUT_MS) / 1000 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
      sleep 1
      if now="$(sentinel_master)" && [ "${now% *}" != "$SELF" ]; then
        master="$now"
        break
      fi
    done
  fi
elif [ "$SELF" != "$FIRST" ]; then
  # No sentinel knows a master: the first pod bootstraps as master, the others replicate it.
  master="$FIRST $REDIS_PORT"
fi
{
  printf 'requirepass "%s"\n' "$REDISCLI_AUTH"
  printf 'masterauth "%s"\n' "$REDISCLI_AUTH"
  printf 'replica-announce-ip %s\n' "$SELF"
  printf 'replica-announce-port %s\n' "$REDIS_PORT"
  printf 'port %s\n' "$REDIS_PORT"
  if [ -n "$master" ] && [ "${master% *}" != "$SELF" ]; then
    printf 'replicaof %s\n' "$master"
  fi
} > "$RUN_DIR/auth.conf"
if [ -n "$master" ] && [ "${master% *}" != "$SELF" ]; then
  echo "starting as a replica of $master"
else
  echo "starting as the master"
fi
exec redis-server "$CONFIG_DIR/redis.conf" --include "$RUN_DIR/auth.conf"
{{- end -}}

{{- define "celeriac.redis.startSentinel" -}}
. "$(dirname "$0")/ha.sh"
umask 077
# Generated at every start (sentinels rewrite their own file, so it lives on an emptyDir): the
# master as the other sentinels know it, else the first pod.
master="$(sentinel_master)" || master="$FIRST $REDIS_PORT"
# The same id across restarts of this pod: the other sentinels replace its entry instead of
# counting a stale one.
myid="$(printf '%s' "$SELF" | sha1sum | cut -c1-40)"
cat > "$SENTINEL_DIR/sentinel.conf" <<CONF
port $SENTINEL_PORT
dir $SENTINEL_DIR
sentinel myid $myid
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $SELF
sentinel announce-port $SENTINEL_PORT
requirepass "$REDISCLI_AUTH"
sentinel monitor $MASTER_NAME $master $QUORUM
sentinel auth-pass $MASTER_NAME "$REDISCLI_AUTH"
sentinel down-after-milliseconds $MASTER_NAME $DOWN_AFTER_MS
sentinel failover-timeout $MASTER_NAME $FAILOVER_TIMEOUT_MS
sentinel parallel-syncs $MASTER_NAME 1
CONF
echo "sentinel monitors $MASTER_NAME at $master"
exec redis-server "$SENTINEL_DIR/sentinel.conf" --sentinel
{{- end -}}
