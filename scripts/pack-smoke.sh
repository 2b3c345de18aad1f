#!/usr/bin/env bash
# The package as a chat backend gets it: `npm pack`, install the tarball into a scratch project, type-check
# the README's producer example against the installed types (strict, skipLibCheck false), then run it against
# real Redis and Postgres: migrate a throwaway database and seed it with the installed bin, start a worker and
# a provisioner from that bin, start a stopped workspace and wait for its result. Everything it made (the
# processes, the database, the Redis keys, the temp dir) is removed on exit.
#
#   scripts/pack-smoke.sh             builds dist/ afresh (the `prepare` script), then packs
#   scripts/pack-smoke.sh --prebuilt  packs the dist/ there is (CI, right after `npm ci` built it)
#
# Needs node/npm, the npm registry, psql, redis-cli, setsid, and Redis and Postgres on 127.0.0.1
# (PACK_SMOKE_PG_URL and REDIS_URL point elsewhere). Takes about 40 s of CPU, most of it two tsc runs.
set -euo pipefail

pack_flags=()
case ${1:-} in
  --prebuilt) pack_flags=(--ignore-scripts) ;;
  '') ;;
  *) echo "usage: $0 [--prebuilt]" >&2; exit 2 ;;
esac

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
PG_URL=${PACK_SMOKE_PG_URL:-postgres://postgres@127.0.0.1:5432}
export REDIS_URL=${REDIS_URL:-redis://127.0.0.1:6379}
# How long the example may take for its result, and a stopped service for its graceful exit, in seconds.
RESULT_WAIT_S=45
STOP_WAIT_S=10

ID="$(date +%s)_$$"
DB="wsjobs_pack_smoke_$ID"
export QUEUE_PREFIX="wsjobs-pack-smoke-$ID"
export DATABASE_URL="$PG_URL/$DB"
# Fast simulated builds; logs at info, to files.
export SIM_BUILD_MS=300 SIM_AGENT_CONNECT_MS=100 SIM_STARTUP_MS=100 LOG_LEVEL=info
export NPM_CONFIG_UPDATE_NOTIFIER=false NPM_CONFIG_FUND=false NPM_CONFIG_AUDIT=false

WORK="$(mktemp -d)"
APP="$WORK/app"
services=()

log() { echo "--- pack-smoke (${SECONDS}s): $*" >&2; }

# Stops a service's whole process group: SIGTERM, then SIGKILL once STOP_WAIT_S has passed.
stop_group() {
  local pid=$1
  kill -TERM -- "-$pid" 2>/dev/null || return 0
  for ((i = 0; i < STOP_WAIT_S * 10; i++)); do
    kill -0 -- "-$pid" 2>/dev/null || return 0
    sleep 0.1
  done
  echo "pack-smoke: process group $pid ignored SIGTERM for ${STOP_WAIT_S}s; killing it" >&2
  kill -KILL -- "-$pid" 2>/dev/null || true
}

cleanup() {
  local rc=$?
  for pid in "${services[@]}"; do stop_group "$pid"; done
  if ((rc != 0)); then
    for file in "$WORK"/*.log; do
      [[ -f $file ]] || continue
      echo "--- last lines of $(basename "$file"):" >&2
      tail -n 20 "$file" >&2
    done
  fi
  psql "$PG_URL/postgres" -qAtc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 ||
    echo "pack-smoke: could not drop database $DB" >&2
  redis-cli -u "$REDIS_URL" --scan --pattern "$QUEUE_PREFIX:*" 2>/dev/null |
    xargs -r -n 500 redis-cli -u "$REDIS_URL" unlink >/dev/null 2>&1 || true
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT

# --- pack and install ---------------------------------------------------------------------------------
log "npm pack ${pack_flags[*]}"
# Without --prebuilt, `prepare` builds dist/ from a clean slate first, as it does for a git install.
TARBALL="$WORK/$(npm pack --silent "${pack_flags[@]}" --pack-destination "$WORK" </dev/null | tail -n 1)"
[[ -f $TARBALL ]] || { echo "pack-smoke: npm pack made no tarball" >&2; exit 1; }

dev_version() { node -p "require('./package.json').devDependencies['$1']"; }
mkdir -p "$APP"
cat >"$APP/package.json" <<JSON
{
  "name": "pack-smoke-consumer",
  "private": true,
  "type": "module",
  "dependencies": { "workspace-jobs": "file:$TARBALL" },
  "devDependencies": { "typescript": "$(dev_version typescript)", "@types/node": "$(dev_version @types/node)" }
}
JSON
cat >"$APP/tsconfig.json" <<'JSON'
{
  "compilerOptions": {
    "target": "ES2022",
    "module": "NodeNext",
    "moduleResolution": "NodeNext",
    "types": ["node"],
    "strict": true,
    "noUncheckedIndexedAccess": true,
    "skipLibCheck": false,
    "outDir": "out"
  },
  "include": ["producer.ts"]
}
JSON
log "npm install (the tarball, typescript, @types/node)"
(cd "$APP" && npm install --no-audit --no-fund --prefer-offline --loglevel=error </dev/null >&2)

# Nothing but the tarball's own files: no tests, bench or docs, and the compiled code is there.
files="$(tar -tzf "$TARBALL")"
for wanted in package/dist/src/index.js package/dist/src/index.d.ts package/bin/workspace-jobs.js \
  package/migrations/0001_schema.sql package/src/dashboard/public/index.html; do
  grep -qx "$wanted" <<<"$files" || { echo "pack-smoke: the tarball lacks $wanted" >&2; exit 1; }
done
if grep -E '^package/(test|bench|docs|src/(cli|worker|shared|producer|provisioner)/)' <<<"$files" ||
  grep -E '\.test\.|\.ts$' <<<"$files" | grep -v '\.d\.ts$'; then
  echo "pack-smoke: the tarball ships files a consumer does not need (above)" >&2
  exit 1
fi

# --- the README's producer example, type-checked against the installed types ----------------------------
log "compiling the README's producer example"
awk '/<!-- pack-smoke: producer example/ { found = 1; next }
     found && /^```ts$/ { inside = 1; next }
     inside && /^```$/ { exit }
     inside { print }' README.md >"$APP/producer.ts"
[[ -s $APP/producer.ts ]] || { echo "pack-smoke: no producer example found in README.md" >&2; exit 1; }
(cd "$APP" && npx --no-install tsc -p .)

# --- run it against real Redis and Postgres, through the installed bin ------------------------------------
cd "$APP"
BIN=node_modules/.bin/workspace-jobs
log "npx workspace-jobs --help"
npx --no-install workspace-jobs --help </dev/null | grep -q '^Usage: workspace-jobs'

log "migrate and seed the throwaway database $DB"
"$BIN" migrate </dev/null >"$WORK/migrate.log" 2>&1
"$BIN" seed </dev/null >"$WORK/seed.log" 2>&1
# The seed's `[chats.stopped]` scenario: its chat id on the next line, the owner above.
chat_id="$(awk '/\[chats\.stopped\]/ { getline; print $2; exit }' "$WORK/seed.log")"
owner_id="$(sed -nE 's/^  owner: .* \(([0-9a-f-]{36})\)$/\1/p' "$WORK/seed.log" | head -n 1)"
[[ -n $chat_id && -n $owner_id ]] || { echo "pack-smoke: could not read the seeded chat" >&2; exit 1; }

log "starting a worker and a provisioner"
for service in worker provisioner; do
  setsid "$BIN" "$service" </dev/null >"$WORK/$service.log" 2>&1 &
  services+=("$!")
done

log "running the example: start chat $chat_id"
result="$(timeout "$RESULT_WAIT_S" node out/producer.js "$chat_id" "$owner_id" 2>"$WORK/producer.log")"
echo "$result"
node -e '
  const result = JSON.parse(process.argv[1]);
  if (result.started !== true || !result.build_id) throw new Error("expected a started workspace with a build");
' "$result"

# The services stop gracefully and exit 0 on SIGTERM.
for pid in "${services[@]}"; do
  kill -TERM -- "-$pid"
  status=0
  timeout "$STOP_WAIT_S" tail --pid="$pid" -f /dev/null || status=$?
  wait "$pid" || status=$?
  ((status == 0)) || { echo "pack-smoke: service $pid exited with status $status" >&2; exit 1; }
done
services=()
log "ok"
