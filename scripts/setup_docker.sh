#!/usr/bin/env bash
# A Docker engine for the real-pod tier: Debian's docker.io (engine, containerd, runc) and mmdebstrap
# (the root filesystems every image starts from). There is no init system on these machines, so the
# engine is started here as a background process, with its own log and pid file, and waited for.
# Idempotent: an engine that answers `docker info` is left alone.
set -euo pipefail
STATE="${OPTISERVE_DOCKER_STATE:-$HOME/.cache/optiserve/docker}"
log() { printf 'setup_docker: %s\n' "$*" >&2; }

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v mmdebstrap >/dev/null 2>&1 || missing+=(mmdebstrap)
command -v iptables >/dev/null 2>&1 || missing+=(iptables)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    log "installing ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
    exit 0
fi
mkdir -p "$STATE"
log "starting dockerd (log: $STATE/dockerd.log)"
nohup dockerd --pidfile "$STATE/dockerd.pid" >"$STATE/dockerd.log" 2>&1 &
for _ in $(seq 60); do
    if docker info >/dev/null 2>&1; then
        log "engine up: $(docker info --format '{{.ServerVersion}}, {{.Driver}}, cgroup v{{.CgroupVersion}}')"
        exit 0
    fi
    sleep 1
done
log "dockerd did not answer within 60 s; its log:"
tail -n 30 "$STATE/dockerd.log" >&2
exit 1
