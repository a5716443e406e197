#!/usr/bin/env bash
# Python 3.14 / 3.15 and RabbitMQ 4.3 for this repository on a Debian 12 host, from a Debian sid
# chroot that every clone of the repository shares.
#
#   bash scripts/sid.sh ensure             build the chroot if it is missing or its recipe changed
#   bash scripts/sid.sh run CMD [ARGS...]  run CMD inside it, with this repository at the same path
#   bash scripts/sid.sh rabbitmq start     a private RabbitMQ 4.3 node on 127.0.0.1:5680; prints its URL
#   bash scripts/sid.sh rabbitmq stop|status|url
#   bash scripts/sid.sh rabbitmq ctl ARGS...   rabbitmqctl -n <that node> ARGS (e.g. list_queues)
#
# The chroot is at ${KIWITRIO_SID_DIR:-/var/cache/kiwitrio/sid}, outside the repository, so a fresh
# clone (CI) reuses it; it is built by debootstrap from the mirror the host's apt already uses.
# `ensure` is idempotent and takes milliseconds when the chroot is up to date: a stamp file in it
# (etc/kiwitrio-sid.stamp) records the recipe it was built with. Changing PACKAGES or
# RECIPE_VERSION below upgrades the chroot in place at the next `ensure`; changing BASE_VERSION
# (what debootstrap is asked for) rebuilds it. A build runs under a lock (two callers do not
# build twice) in a temporary directory that is renamed into place only when complete.
#
# Every command inside the chroot runs in a private mount namespace (unshare --mount): /proc,
# /dev, /sys, the host's /tmp and the repository are mounted there and nowhere else, and those
# mounts vanish with the last process of the namespace. Nothing is left in the host's mount table.
#
# The RabbitMQ 4.3 node (name kiwitrio-rmq43@localhost, guest/guest from 127.0.0.1) keeps its
# data, logs and config in the chroot at /var/lib/kiwitrio-rmq43 (lost when the chroot is
# rebuilt), runs as the chroot's rabbitmq user in its own session and mount namespace, and
# keeps running after this script exits, until `rabbitmq stop`. It registers with the host's
# epmd. It denies the deprecated features transient_nonexcl_queues and global_qos, as a strict
# RabbitMQ 4 deployment does. The fault tests' own private nodes, when the tests run inside the
# chroot (nox -s tests-3.14), are the chroot's RabbitMQ 4.3 too.
#
# Needs root (debootstrap, chroot, mount). Log lines ("sid: ...") go to stderr; stdout carries
# only what a command prints (`run`'s CMD, `rabbitmq url`/`start`'s URL), so $(...) works.
#
# Environment:
#   KIWITRIO_SID_DIR       where the chroot lives (default /var/cache/kiwitrio/sid)
#   KIWITRIO_SID_MIRROR    the Debian mirror (default: the URIs: line of the host's debian.sources)
#   KIWITRIO_RMQ43_PORT    the RabbitMQ 4.3 node's AMQP port (default 5680; dist port = +20000)
#   KIWITRIO_RMQ43_WAIT    how long `rabbitmq start` waits for AMQP, in seconds (default 60)
set -euo pipefail

SCRIPT=$(readlink -f "${BASH_SOURCE[0]}")
REPO=$(cd "$(dirname "$SCRIPT")/.." && pwd -P)

SID_DIR=${KIWITRIO_SID_DIR:-/var/cache/kiwitrio/sid}
SID_DIR=${SID_DIR%/}
[[ $SID_DIR == /?* ]] || { echo "sid: ERROR: KIWITRIO_SID_DIR must be an absolute path, not '$SID_DIR'" >&2; exit 2; }
LOCK="$SID_DIR.lock"
STAMP_REL=etc/kiwitrio-sid.stamp

# What debootstrap builds. Changing this rebuilds the chroot from scratch.
BASE_VERSION=2
BASE_ID="$BASE_VERSION debootstrap --variant=minbase sid, rabbitmq user with the host's ids"
# What is installed on top. Changing either upgrades the chroot in place (apt-get install).
# No compiler: every compiled dependency (multidict, yarl, propcache, cbor2) has cp314 and cp315
# manylinux wheels on PyPI (checked with pip install --only-binary=:all: on 3.14.10 and 3.15.2).
RECIPE_VERSION=1
PACKAGES=(python3.14 python3.14-venv python3.15 python3.15-venv rabbitmq-server ca-certificates)
RECIPE_ID="$RECIPE_VERSION ${PACKAGES[*]}"

# apt inside the chroot: the mirror's sid Release file can be past its Valid-Until date, which
# apt otherwise refuses; recommends are not needed.
APT_OPTS=(-q -o Acquire::Check-Valid-Until=false -o APT::Install-Recommends=false
          -o Dpkg::Use-Pty=0)
CHROOT_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt

# The private RabbitMQ 4.3 node.
RMQ_PORT=${KIWITRIO_RMQ43_PORT:-5680}
RMQ_DIST_PORT=$((RMQ_PORT + 20000))
RMQ_WAIT=${KIWITRIO_RMQ43_WAIT:-60}
if [[ $RMQ_PORT == 5680 ]]; then
    RMQ_NAME=kiwitrio-rmq43
else
    RMQ_NAME=kiwitrio-rmq43-$RMQ_PORT
fi
RMQ_NODE=$RMQ_NAME@localhost
RMQ_BASE=/var/lib/$RMQ_NAME            # inside the chroot
RMQ_URL="amqp://guest:guest@127.0.0.1:$RMQ_PORT/"
RMQ_BIN=/usr/lib/rabbitmq/bin          # inside the chroot

say() { echo "sid: $*" >&2; }
die() { echo "sid: ERROR: $*" >&2; exit 1; }

need_root() {
    [[ $(id -u) -eq 0 ]] || die "this needs root (debootstrap, chroot and mount): run it as root or with sudo"
}

# ---------------------------------------------------------------------------------------------
# Running something inside a chroot, in a private mount namespace.

# The host-side half: `in_chroot ROOT CWD MOUNTS ENV... -- CMD ARGS...` runs CMD in the chroot
# ROOT with only the environment ENV (NAME=VALUE words), in directory CWD (a path inside the
# chroot). MOUNTS is a comma-separated list of extra mounts: "tmp" (the host's /tmp) and "repo"
# (this repository at its own path). /proc, /dev (with /dev/shm, /dev/pts) and /sys are always
# mounted. It execs, so the exit status and signals are CMD's own.
in_chroot() {
    KIWITRIO_SID_PARENT_NS=$(readlink /proc/self/ns/mnt) \
        exec unshare --mount --propagation private -- "$BASH" "$SCRIPT" __ns "$@"
}

# The half that runs inside the new mount namespace (see in_chroot). Private propagation: the
# mounts below are not seen by the host and are undone when the namespace's last process ends.
ns_main() {
    local root=$1 cwd=$2 mounts=$3
    shift 3
    local -a env=()
    while [[ $# -gt 0 && $1 != -- ]]; do
        env+=("$1")
        shift
    done
    [[ $# -gt 1 ]] || die "__ns: no command"
    shift
    # Never mount anything in the caller's mount namespace: __ns is only for in_chroot.
    if [[ -z ${KIWITRIO_SID_PARENT_NS:-} || $(readlink /proc/self/ns/mnt) == "$KIWITRIO_SID_PARENT_NS" ]]; then
        die "__ns must run in a new mount namespace (through in_chroot)"
    fi
    mount -t proc proc "$root/proc"
    mount --rbind /dev "$root/dev"
    mount --rbind /sys "$root/sys" 2>/dev/null || say "could not mount /sys in the chroot; going on without it"
    if [[ ,$mounts, == *,tmp,* ]]; then
        # The host's /tmp: temporary directories and sockets are shared with the host (the fault
        # tests' private RabbitMQ nodes live in /tmp/kt-faults-*). Sticky and world-writable, so
        # the chroot's rabbitmq user can use it as on the host.
        mount --rbind /tmp "$root/tmp"
    fi
    if [[ ,$mounts, == *,repo,* ]]; then
        mkdir -p "$root$REPO"
        mount --bind "$REPO" "$root$REPO"
    fi
    exec chroot "$root" /usr/bin/env -i -C "$cwd" "${env[@]}" "$@"
}

# The environment a command in the chroot gets: a PATH for sid, HOME, a UTF-8 locale, the CA
# bundle for pip and Python, and what the project and CI read from the caller's environment.
chroot_env() {
    local home=${HOME:-/root}
    [[ -d $SID_DIR$home ]] || home=/root
    local -a env=(PATH="$CHROOT_PATH" HOME="$home" LANG=C.UTF-8
                  PIP_CERT="$CA_BUNDLE" SSL_CERT_FILE="$CA_BUNDLE" REQUESTS_CA_BUNDLE="$CA_BUNDLE"
                  PIP_DISABLE_PIP_VERSION_CHECK=1)
    local name
    while IFS= read -r name; do
        case $name in
            KIWITRIO_* | PYTEST_* | CI | TERM | COLUMNS | LINES | TZ | NO_COLOR | FORCE_COLOR \
            | PY_COLORS | PYTHONUNBUFFERED | PYTHONHASHSEED | PYTHONFAULTHANDLER \
            | PYTHONDONTWRITEBYTECODE | PYTHONWARNINGS | PYTHONDEVMODE | PYTHONTRACEMALLOC \
            | http_proxy | https_proxy | no_proxy | HTTP_PROXY | HTTPS_PROXY | NO_PROXY)
                env+=("$name=${!name}") ;;
            PIP_CERT) ;;  # the chroot's bundle, set above
            PIP_FIND_LINKS) ;;  # a host directory, absent from the chroot
            PIP_*) env+=("$name=${!name}") ;;
            TMPDIR) [[ ${!name} == /tmp || ${!name} == /tmp/* ]] && env+=("$name=${!name}") ;;
        esac
    done < <(compgen -e)
    printf '%s\0' "${env[@]}"
}

# ---------------------------------------------------------------------------------------------
# Building the chroot.

mirror() {
    if [[ -n ${KIWITRIO_SID_MIRROR:-} ]]; then
        echo "$KIWITRIO_SID_MIRROR"
        return
    fi
    local uri=""
    if [[ -f /etc/apt/sources.list.d/debian.sources ]]; then
        uri=$(awk '$1 == "URIs:" { print $2; exit }' /etc/apt/sources.list.d/debian.sources)
    fi
    if [[ -z $uri && -f /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' \
              /etc/apt/sources.list)
    fi
    echo "${uri:-http://deb.debian.org/debian}"
}

# 0 if the chroot at $1 is complete and built with the current base (it may need an upgrade).
base_current() {
    [[ -f $1/$STAMP_REL ]] && grep -qxF "base=$BASE_ID" "$1/$STAMP_REL"
}

# 0 if the chroot at $1 is complete and nothing about it needs doing.
up_to_date() {
    base_current "$1" && grep -qxF "recipe=$RECIPE_ID" "$1/$STAMP_REL"
}

# Copy a host file into the chroot if it differs (atomically: a concurrent reader sees the old or
# the new file, never half of one).
sync_file() {
    local src=$1 root=$2 dst=$2$3
    [[ -e $src ]] || return 0
    if [[ -L $dst ]] || ! cmp -s "$src" "$dst"; then
        mkdir -p "$(dirname "$dst")"
        cp -L "$src" "$dst.kiwitrio-new"
        chmod 644 "$dst.kiwitrio-new"
        mv -f "$dst.kiwitrio-new" "$dst"
    fi
}

# The host's DNS and CA bundle (the CA bundle can carry a site's own authority, which pip needs),
# and a hosts file that resolves localhost (RabbitMQ's node names are NAME@localhost).
sync_host_files() {
    local root=$1
    sync_file /etc/resolv.conf "$root" /etc/resolv.conf
    sync_file "$CA_BUNDLE" "$root" "$CA_BUNDLE"
    if ! grep -qE '^127\.0\.0\.1[[:space:]]+(.*[[:space:]])?localhost([[:space:]]|$)' "$root/etc/hosts" 2>/dev/null; then
        echo "127.0.0.1 localhost" >>"$root/etc/hosts"
    fi
}

# Install (or upgrade to) the recipe's packages in the chroot at $1, and write its stamp.
provision() {
    local root=$1 start=$SECONDS
    # No service starts inside the chroot when a package is installed (rabbitmq-server's
    # postinst would try): invoke-rc.d and deb-systemd-invoke honour policy-rc.d.
    printf '#!/bin/sh\n# kiwitrio: no services start in this chroot.\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
    chmod 755 "$root/usr/sbin/policy-rc.d"
    sync_host_files "$root"
    local log=$root/var/log/kiwitrio-provision.log
    say "installing in the chroot: ${PACKAGES[*]} (apt-get; log: $log)"
    local -a env=(PATH="$CHROOT_PATH" HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive
                  PACKAGES="${PACKAGES[*]}")
    # shellcheck disable=SC2016  # expanded by the chroot's sh
    if ! ( in_chroot "$root" / "" "${env[@]}" -- /bin/sh -ec '
            apt-get "$@" update
            apt-get "$@" install -y --no-install-recommends $PACKAGES
            apt-get "$@" clean' sh "${APT_OPTS[@]}" ) >"$log" 2>&1; then
        tail -n 30 "$log" >&2 || true
        die "apt-get in the chroot $root failed (log: $log)"
    fi
    # ca-certificates regenerates the bundle on install/upgrade: put the host's back.
    sync_host_files "$root"
    {
        echo "base=$BASE_ID"
        echo "recipe=$RECIPE_ID"
        echo "mirror=$(mirror)"
        echo "provisioned=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
        dpkg-query --admindir="$root/var/lib/dpkg" -W -f '${Package}=${Version}\n' "${PACKAGES[@]}"
    } >"$root/$STAMP_REL.new"
    mv -f "$root/$STAMP_REL.new" "$root/$STAMP_REL"
    say "installed in $((SECONDS - start))s: $(grep -E '^(python3\.1[45]|rabbitmq-server)=' "$root/$STAMP_REL" | tr '\n' ' ')"
}

# Processes whose root directory is $1 (something is running inside that chroot).
procs_rooted_in() {
    local dir p
    dir=$(readlink -f "$1")
    for p in /proc/[0-9]*; do
        [[ $(readlink "$p/root" 2>/dev/null) == "$dir" ]] && echo "${p#/proc/}"
    done
    return 0
}

# Remove a chroot directory that is not in use: nothing mounted under it in this namespace (so
# rm cannot walk into a bind-mounted repository or /dev) and no process running inside it.
remove_chroot() {
    local dir
    dir=$(readlink -f "$1")
    if findmnt -rn -o TARGET | grep -q -e "^$dir\$" -e "^$dir/"; then
        say "not removing $dir: something is mounted under it"
        return 1
    fi
    if [[ -n $(procs_rooted_in "$dir") ]]; then
        say "not removing $dir yet: processes run inside it ($(procs_rooted_in "$dir" | tr '\n' ' '))"
        return 1
    fi
    rm -rf --one-file-system "$dir"
}

# Half-built chroots of builds that died, and replaced chroots no longer in use.
remove_leftovers() {
    local dir
    for dir in "$SID_DIR".new.* "$SID_DIR".old.*; do
        if [[ -d $dir ]]; then
            say "removing the leftover $dir"
            remove_chroot "$dir" || true
        elif [[ -f $dir && $dir == *.log ]]; then
            rm -f "$dir"  # a failed debootstrap's log
        fi
    done
}

# Give the chroot's rabbitmq user the host's rabbitmq uid and gid (when the host has that user
# and the ids are free in the chroot), before rabbitmq-server's postinst creates the user: the
# node's processes and the fault tests' files in the shared /tmp then show as "rabbitmq" on the
# host too, not as whichever host user happens to have the chroot's id.
align_rabbitmq_ids() {
    local root=$1 entry uid gid
    entry=$(getent passwd rabbitmq) || return 0
    uid=$(cut -d: -f3 <<<"$entry")
    gid=$(cut -d: -f4 <<<"$entry")
    if grep -q '^rabbitmq:' "$root/etc/passwd" "$root/etc/group" \
        || awk -F: -v u="$uid" '$3 == u { f = 1 } END { exit !f }' "$root/etc/passwd" \
        || awk -F: -v g="$gid" '$3 == g { f = 1 } END { exit !f }' "$root/etc/group"; then
        say "not aligning the chroot's rabbitmq ids with the host's ($uid:$gid): taken there"
        return 0
    fi
    echo "rabbitmq:x:$gid:" >>"$root/etc/group"
    [[ -f $root/etc/gshadow ]] && echo "rabbitmq:!::" >>"$root/etc/gshadow"
    echo "rabbitmq:x:$uid:$gid:RabbitMQ messaging server:/var/lib/rabbitmq:/usr/sbin/nologin" >>"$root/etc/passwd"
    [[ -f $root/etc/shadow ]] && echo "rabbitmq:*:$(( $(date +%s) / 86400 )):0:99999:7:::" >>"$root/etc/shadow"
    mkdir -p "$root/var/lib/rabbitmq"
    chown "$uid:$gid" "$root/var/lib/rabbitmq"
    chmod 755 "$root/var/lib/rabbitmq"
}

build_new() {
    local tmp="$SID_DIR.new.$$" start=$SECONDS mirror_uri
    mirror_uri=$(mirror)
    if ! command -v debootstrap >/dev/null 2>&1; then
        say "installing debootstrap on the host (apt-get install debootstrap)"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2 \
            || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q debootstrap >&2; } \
            || die "could not install debootstrap"
    fi
    say "building a Debian sid chroot in $tmp from $mirror_uri (debootstrap, about a minute)"
    mkdir -p "$tmp"
    # In a private mount namespace: debootstrap mounts /proc and /sys in the target, and a
    # debootstrap that dies must not leave them mounted.
    if ! unshare --mount --propagation private -- \
            debootstrap --variant=minbase sid "$tmp" "$mirror_uri" >"$tmp.log" 2>&1; then
        tail -n 30 "$tmp.log" >&2 || true
        die "debootstrap failed (log: $tmp.log; the half-built $tmp is removed by the next ensure)"
    fi
    rm -f "$tmp.log"
    say "debootstrap done in $((SECONDS - start))s"
    align_rabbitmq_ids "$tmp"
    provision "$tmp"
    if [[ -e $SID_DIR ]]; then
        # A chroot built with another base. Our RabbitMQ node runs from it: stop it first.
        local old="$SID_DIR.old.$$"
        if rmq_answers || [[ -n $(rmq_pids) ]]; then
            say "stopping the RabbitMQ node $RMQ_NODE, which runs from the old chroot (start it again with: bash scripts/sid.sh rabbitmq start)"
            rmq_stop || true
        fi
        mv "$SID_DIR" "$old"
        mv "$tmp" "$SID_DIR"
        remove_chroot "$old" || say "the old chroot stays at $old until nothing uses it"
    else
        mv "$tmp" "$SID_DIR"
    fi
    say "chroot ready at $SID_DIR (built in $((SECONDS - start))s)"
}

cmd_ensure() {
    need_root
    if up_to_date "$SID_DIR"; then
        sync_host_files "$SID_DIR"
        return 0
    fi
    mkdir -p "$(dirname "$SID_DIR")"
    exec 9>"$LOCK"
    if ! flock -n 9; then
        say "another process is building the chroot; waiting for it (lock $LOCK)"
        flock -w 1800 9 || die "gave up waiting for the lock $LOCK after 30 minutes"
    fi
    # Checked again under the lock: the other process may just have built it.
    if up_to_date "$SID_DIR"; then
        say "chroot ready at $SID_DIR (built by another process)"
    else
        remove_leftovers
        if base_current "$SID_DIR"; then
            say "the recipe changed since $SID_DIR was provisioned; upgrading it in place"
            provision "$SID_DIR"
        else
            [[ -e $SID_DIR ]] && say "$SID_DIR was built from another base (or is incomplete); rebuilding it"
            build_new
        fi
    fi
    exec 9>&-
}

# ---------------------------------------------------------------------------------------------
# run

cmd_run() {
    [[ $# -gt 0 ]] || die "usage: sid.sh run CMD [ARGS...]"
    cmd_ensure
    local cwd
    cwd=$(pwd -P)
    if [[ $cwd != "$REPO" && $cwd != "$REPO"/* && $cwd != /tmp && $cwd != /tmp/* ]]; then
        say "the current directory $cwd is not inside the chroot (only $REPO and /tmp are); running in $REPO"
        cwd=$REPO
    fi
    local -a env
    mapfile -d '' -t env < <(chroot_env)
    in_chroot "$SID_DIR" "$cwd" tmp,repo "${env[@]}" -- "$@"
}

# ---------------------------------------------------------------------------------------------
# rabbitmq: a private RabbitMQ 4.3 node running from the chroot.

# 0 if something on 127.0.0.1:$RMQ_PORT answers the AMQP 0-9-1 protocol header with a frame of
# type 1 (a method frame: Connection.Start), i.e. a broker is ready there.
rmq_answers() {
    # shellcheck disable=SC2016  # expanded by the inner bash
    timeout 5 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "AMQP\x00\x00\x09\x01" >&3
        [[ $(head -c 1 <&3 | od -An -tx1 | tr -d " ") == 01 ]]' _ "$RMQ_PORT" 2>/dev/null
}

# PIDs of the node's processes: those whose environment names it (never by process name, so the
# host's shared node and other private nodes are never touched).
rmq_pids() {
    local p marker="RABBITMQ_NODENAME=$RMQ_NODE"
    for p in /proc/[0-9]*; do
        if { tr '\0' '\n' <"$p/environ"; } 2>/dev/null | grep -qxF "$marker"; then
            echo "${p#/proc/}"
        fi
    done
    return 0
}

# uid:gid of the chroot's rabbitmq user (from the chroot's passwd file).
rmq_owner() {
    awk -F: '$1 == "rabbitmq" { print $3 ":" $4; found = 1 } END { exit !found }' "$SID_DIR/etc/passwd" \
        || die "the chroot has no rabbitmq user (is rabbitmq-server installed in $SID_DIR?)"
}

rmq_env() {
    printf '%s\0' PATH="$CHROOT_PATH" HOME="$RMQ_BASE/home" LANG=C.UTF-8 LC_ALL=C.UTF-8 \
        RABBITMQ_NODENAME="$RMQ_NODE" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
        RABBITMQ_NODE_PORT="$RMQ_PORT" \
        RABBITMQ_DIST_PORT="$RMQ_DIST_PORT" \
        RABBITMQ_MNESIA_BASE="$RMQ_BASE/mnesia" \
        RABBITMQ_LOG_BASE="$RMQ_BASE/log" \
        RABBITMQ_ENABLED_PLUGINS_FILE="$RMQ_BASE/enabled_plugins" \
        RABBITMQ_CONFIG_FILE="$RMQ_BASE/rabbitmq" \
        RABBITMQ_FEATURE_FLAGS_FILE="$RMQ_BASE/mnesia/feature_flags" \
        RABBITMQ_CONF_ENV_FILE="$RMQ_BASE/rabbitmq-env.conf" \
        RABBITMQ_PID_FILE="$RMQ_BASE/mnesia/node.pid" \
        ERL_EPMD_ADDRESS=127.0.0.1 \
        "ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}"
}

# The node's files, inside the chroot at $RMQ_BASE, owned by the chroot's rabbitmq user (the
# node runs as that user). Its own env file keeps the chroot's /etc/rabbitmq out of it.
rmq_prepare() {
    local base=$SID_DIR$RMQ_BASE
    mkdir -p "$base/mnesia" "$base/log" "$base/home"
    echo "[]." >"$base/enabled_plugins"
    cat >"$base/rabbitmq.conf" <<EOF
# Written by scripts/sid.sh: the private RabbitMQ 4.3 node $RMQ_NODE.
listeners.tcp.default = 127.0.0.1:$RMQ_PORT
loopback_users.guest = true
log.console = false
log.file.level = info
# As strict as RabbitMQ gets about what is on its way out: 4.3 still permits transient
# non-exclusive queues by default, but deployments that deny them must work too.
deprecated_features.permit.transient_nonexcl_queues = false
deprecated_features.permit.global_qos = false
EOF
    echo "ERL_EPMD_ADDRESS=127.0.0.1" >"$base/rabbitmq-env.conf"
    chown -R "$(rmq_owner)" "$base"
}

# rabbitmqctl -n NODE ARGS... inside the chroot, as the rabbitmq user (its cookie is in the
# node's HOME). Runs in a subshell: in_chroot execs.
rmq_ctl() {
    local -a env
    mapfile -d '' -t env < <(rmq_env)
    ( in_chroot "$SID_DIR" "$RMQ_BASE" "" "${env[@]}" -- \
        setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
        "$RMQ_BIN/rabbitmqctl" -n "$RMQ_NODE" "$@" )
}

rmq_stop() {
    if ! rmq_answers && [[ -z $(rmq_pids) ]]; then
        say "$RMQ_NODE is not running"
        return 0
    fi
    say "stopping $RMQ_NODE (rabbitmqctl -n $RMQ_NODE stop)"
    rmq_ctl stop >&2 || say "rabbitmqctl stop failed"
    local deadline=$((SECONDS + 30))
    while [[ -n $(rmq_pids) ]]; do
        if (( SECONDS > deadline )); then
            say "processes of $RMQ_NODE still run after 30 s; sending them SIGTERM: $(rmq_pids | tr '\n' ' ')"
            rmq_pids | xargs -r kill -TERM 2>/dev/null || true
            sleep 2
            break
        fi
        sleep 0.2
    done
    say "$RMQ_NODE stopped"
}

cmd_rabbitmq() {
    local action=${1:-}
    case $action in
        url)
            echo "$RMQ_URL"
            ;;
        status)
            local pids
            pids=$(rmq_pids | tr '\n' ' ')
            if rmq_answers; then
                echo "running: $RMQ_NODE answers AMQP at $RMQ_URL (pids ${pids:-not visible})"
            elif [[ -n $pids ]]; then
                echo "starting or stopping: $RMQ_NODE has processes ($pids) but does not answer AMQP on $RMQ_PORT yet"
                return 1
            else
                echo "stopped: nothing answers AMQP on 127.0.0.1:$RMQ_PORT"
                return 3
            fi
            ;;
        start)
            need_root
            if rmq_answers; then
                say "a broker already answers AMQP on 127.0.0.1:$RMQ_PORT; nothing to do"
                echo "$RMQ_URL"
                return 0
            fi
            cmd_ensure
            # One start at a time (a second caller waits, then finds the node answering). The
            # node itself must not inherit this lock's fd: it is closed for it below.
            exec 8>"$SID_DIR.$RMQ_NAME.lock"
            flock -w $((RMQ_WAIT + 30)) 8 || die "another 'rabbitmq start' holds $SID_DIR.$RMQ_NAME.lock"
            if rmq_answers; then
                say "$RMQ_NODE was started meanwhile; it answers AMQP on 127.0.0.1:$RMQ_PORT"
                echo "$RMQ_URL"
                return 0
            fi
            local start=$SECONDS launcher=""
            if [[ -n $(rmq_pids) ]]; then
                say "$RMQ_NODE is already starting; waiting for it"
            else
                rmq_prepare
                local out=$SID_DIR$RMQ_BASE/server.out
                local -a env
                mapfile -d '' -t env < <(rmq_env)
                say "starting $RMQ_NODE (RabbitMQ $(sed -n 's/^rabbitmq-server=//p' "$SID_DIR/$STAMP_REL")) on 127.0.0.1:$RMQ_PORT, dist port $RMQ_DIST_PORT"
                # Detached: its own session (setsid), no terminal, output to a file, and no fd of
                # ours (a $(...) capturing our stdout must not wait for the node). It runs in its
                # own mount namespace, which lives as long as the node does.
                # (setsid -w: the background job lives as long as the node, whether setsid had to
                # fork or not, so $! tells whether the node died while starting.)
                (
                    # Every fd but 0-2 closed: our locks, and whatever our caller left open.
                    for fd in /proc/"$BASHPID"/fd/*; do
                        fd=${fd##*/}
                        if (( fd > 2 )); then eval "exec $fd>&-" 2>/dev/null || true; fi
                    done
                    KIWITRIO_SID_PARENT_NS=$(readlink /proc/self/ns/mnt) \
                        exec setsid -w unshare --mount --propagation private -- \
                        "$BASH" "$SCRIPT" __ns "$SID_DIR" "$RMQ_BASE" "" "${env[@]}" -- \
                        setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
                        "$RMQ_BIN/rabbitmq-server"
                ) </dev/null >"$out" 2>&1 &
                launcher=$!
            fi
            local deadline=$((SECONDS + RMQ_WAIT))
            until rmq_answers; do
                if [[ -n $launcher ]] && ! kill -0 "$launcher" 2>/dev/null; then
                    tail -n 40 "$SID_DIR$RMQ_BASE/server.out" >&2 || true
                    die "$RMQ_NODE exited while starting (output above; logs in $SID_DIR$RMQ_BASE/log)"
                fi
                if (( SECONDS >= deadline )); then
                    tail -n 40 "$SID_DIR$RMQ_BASE/server.out" >&2 || true
                    die "$RMQ_NODE does not answer AMQP on 127.0.0.1:$RMQ_PORT after ${RMQ_WAIT}s (logs in $SID_DIR$RMQ_BASE/log)"
                fi
                sleep 0.2
            done
            exec 8>&-
            say "$RMQ_NODE answers AMQP on 127.0.0.1:$RMQ_PORT (after $((SECONDS - start))s)"
            echo "$RMQ_URL"
            ;;
        stop)
            need_root
            rmq_stop
            ;;
        ctl)
            need_root
            shift
            [[ -f $SID_DIR/$STAMP_REL ]] || die "no chroot at $SID_DIR yet (bash scripts/sid.sh rabbitmq start)"
            rmq_ctl "$@"
            ;;
        *)
            die "usage: sid.sh rabbitmq start|stop|status|url|ctl ARGS..."
            ;;
    esac
}

usage() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SCRIPT" >&2
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case $cmd in
        ensure) cmd_ensure "$@" ;;
        run) cmd_run "$@" ;;
        rabbitmq) cmd_rabbitmq "$@" ;;
        __ns) ns_main "$@" ;;
        -h | --help | help) usage ;;
        *) usage; exit 2 ;;
    esac
}

main "$@"
