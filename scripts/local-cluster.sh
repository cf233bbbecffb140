#!/usr/bin/env bash
# A 3-process paytx cluster on this machine, with one command.
#
#   scripts/local-cluster.sh start   [DIR]   # configs (first time), 3 nodes, wait for a leader
#   scripts/local-cluster.sh stop    [DIR]   # Ctrl-C (SIGINT) every node; SIGKILL stragglers
#   scripts/local-cluster.sh restart [DIR]   # stop, then start on the same data
#   scripts/local-cluster.sh status  [DIR]   # which nodes run, and `paytx client status`
#
# DIR defaults to ./paytx-local and holds cluster.toml (the settings every node
# shares), node-N.toml (each node's own, naming cluster.toml), node-N.log,
# node-N.pid and data/node-N. Running `start` again on an existing DIR keeps
# its configs and data (nodes already running are left alone); delete DIR to
# start afresh.
#
# Environment:
#   PAYTX          the binary (default: target/release/paytx of this repository,
#                  built with `cargo build --release` when missing)
#   BASE_PORT      first port, used only when the configs are generated (default 7101)
#   START_TIMEOUT  seconds to wait for a leader (default 30)
#   STOP_TIMEOUT   seconds to wait after SIGINT before SIGKILL (default 15)
set -euo pipefail

readonly NODES=3
SCRIPT_DIR="$(dirname "${BASH_SOURCE[0]}")"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
readonly SCRIPT_DIR REPO_ROOT
BASE_PORT="${BASE_PORT:-7101}"
START_TIMEOUT="${START_TIMEOUT:-30}"
STOP_TIMEOUT="${STOP_TIMEOUT:-15}"

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '$d' -e 's/^# \{0,1\}//'
    exit "${1:-2}"
}

die() {
    echo "local-cluster: $*" >&2
    exit 1
}

say() {
    echo "local-cluster: $*"
}

# Sets PAYTX to the binary's absolute path; builds the default one when missing.
resolve_binary() {
    local bin="${PAYTX:-}" bin_dir
    if [[ -z "${bin}" ]]; then
        bin="${REPO_ROOT}/target/release/paytx"
        if [[ ! -x "${bin}" ]]; then
            command -v cargo >/dev/null 2>&1 || die "${bin} is missing and cargo is not installed; set PAYTX"
            say "building ${bin} (cargo build --release; the first build takes several minutes)"
            (cd "${REPO_ROOT}" && cargo build --release --bin paytx) || die "cargo build --release failed"
        fi
    fi
    [[ -x "${bin}" ]] || die "PAYTX=${bin} is not an executable"
    if [[ "${bin}" != /* ]]; then
        bin_dir="$(cd "$(dirname "${bin}")" && pwd)"
        bin="${bin_dir}/${bin##*/}"
    fi
    PAYTX="${bin}"
}

# Sets PID to node $1's pid when it runs (and really is that paytx node), else "".
find_pid() {
    local pidfile="${DIR}/node-$1.pid" pid args
    PID=""
    [[ -s "${pidfile}" ]] || return 0
    pid="$(<"${pidfile}")"
    [[ "${pid}" =~ ^[0-9]+$ ]] || return 0
    kill -0 "${pid}" 2>/dev/null || return 0
    # Guard against a recycled pid: the process must run this node's config.
    args="$(ps -o args= -p "${pid}" 2>/dev/null || true)"
    [[ "${args}" == *"node --config ${DIR}/node-$1.toml"* ]] || return 0
    PID="${pid}"
}

# Sets ADDRS (array) and ADDRS_CSV from the configs' `listen` lines.
load_addrs() {
    local n config addr
    ADDRS=()
    for ((n = 1; n <= NODES; n++)); do
        config="${DIR}/node-${n}.toml"
        [[ -f "${config}" ]] || die "${config} is missing"
        addr="$(sed -n 's/^listen[[:space:]]*=[[:space:]]*"\(.*\)"[[:space:]]*$/\1/p' "${config}")"
        [[ -n "${addr}" ]] || die "no listen address in ${config}"
        ADDRS+=("${addr}")
    done
    ADDRS_CSV="$(
        IFS=,
        echo "${ADDRS[*]}"
    )"
}

# Writes the configs the first time; keeps existing ones.
ensure_configs() {
    local n present=0
    for ((n = 1; n <= NODES; n++)); do
        if [[ -f "${DIR}/node-${n}.toml" ]]; then
            present=$((present + 1))
        fi
    done
    if ((present == NODES)); then
        say "using the existing configs and data in ${DIR}"
        return
    fi
    ((present == 0)) || die "${DIR} has only some of node-1..${NODES}.toml; remove it or restore them"
    say "writing configs to ${DIR} (ports ${BASE_PORT}-$((BASE_PORT + NODES - 1)))"
    "${PAYTX}" gen-configs --nodes "${NODES}" --dir "${DIR}" --base-port "${BASE_PORT}" >/dev/null
}

start_node() {
    local n="$1"
    local pidfile="${DIR}/node-${n}.pid" log="${DIR}/node-${n}.log" config="${DIR}/node-${n}.toml"
    find_pid "${n}"
    if [[ -n "${PID}" ]]; then
        say "node ${n} is already running (pid ${PID})"
        return
    fi
    rm -f "${pidfile}"
    local now
    now="$(date '+%Y-%m-%dT%H:%M:%S%z')"
    printf '\n===== %s: local-cluster starts node %s =====\n' "${now}" "${n}" >>"${log}"
    # The child writes its own pid and then becomes the node (exec), so the
    # pid file names the node even if setsid had to fork. setsid gives the
    # node a session of its own: a Ctrl-C in this terminal does not reach it;
    # `stop` does.
    local launcher=()
    if command -v setsid >/dev/null 2>&1; then
        launcher=(setsid)
    fi
    # shellcheck disable=SC2016 # $$ and $1.. expand in the child shell, on purpose.
    NO_COLOR=1 ${launcher[@]+"${launcher[@]}"} bash -c 'echo "$$" >"$1" && exec "$2" node --config "$3"' \
        paytx-node "${pidfile}" "${PAYTX}" "${config}" </dev/null >>"${log}" 2>&1 &
    local waited=0
    until [[ -s "${pidfile}" ]]; do
        ((waited < 50)) || die "node ${n} did not start; see ${log}"
        sleep 0.1
        waited=$((waited + 1))
    done
    say "node ${n} started (pid $(<"${pidfile}"), log ${log})"
}

# Exits with the end of its log when node $1 has died.
check_alive() {
    find_pid "$1"
    if [[ -z "${PID}" ]]; then
        echo "local-cluster: node $1 exited; the end of ${DIR}/node-$1.log:" >&2
        tail -n 20 "${DIR}/node-$1.log" >&2 || true
        echo "local-cluster: stop the other nodes with: ${SCRIPT_DIR}/local-cluster.sh stop ${DIR}" >&2
        exit 1
    fi
}

wait_for_leader() {
    local deadline=$((SECONDS + START_TIMEOUT)) output n
    while true; do
        for ((n = 1; n <= NODES; n++)); do
            check_alive "${n}"
        done
        # Fails while no node listens yet; a node is ready once it leads.
        output="$("${PAYTX}" client --addrs "${ADDRS_CSV}" status 2>&1 || true)"
        if [[ "${output}" == *'"coordinator_ready":true'* ]]; then
            echo "${output}"
            return
        fi
        if ((SECONDS >= deadline)); then
            echo "${output}" >&2
            die "no leader after ${START_TIMEOUT}s; see ${DIR}/node-*.log"
        fi
        sleep 0.5
    done
}

cmd_start() {
    resolve_binary
    ensure_configs
    load_addrs
    local n
    for ((n = 1; n <= NODES; n++)); do
        start_node "${n}"
    done
    say "waiting up to ${START_TIMEOUT}s for a coordinator leader..."
    wait_for_leader
    local client="${PAYTX} client --addrs ${ADDRS_CSV}"
    cat <<EOF

paytx cluster is up in ${DIR}. Try:

  ${client} open-account --account 1 --initial-minor 10000
  ${client} open-account --account 2
  ${client} create-order --order 7 --merchant 2 --amount-minor 2500
  ${client} pay --order 7 --payer 1 --channel 2 --key pay-7
  ${client} balance --account 1
  ${client} balance --account 2
  ${client} order --order 7
  ${client} txn-status --key pay-7
  ${client} status

Logs: ${DIR}/node-N.log. Stop with: ${SCRIPT_DIR}/local-cluster.sh stop ${DIR}
EOF
}

cmd_stop() {
    local n pids=()
    for ((n = 1; n <= NODES; n++)); do
        find_pid "${n}"
        if [[ -n "${PID}" ]]; then
            kill -INT "${PID}" 2>/dev/null || true
            pids+=("${n}:${PID}")
            say "sent SIGINT to node ${n} (pid ${PID})"
        else
            rm -f "${DIR}/node-${n}.pid"
        fi
    done
    if ((${#pids[@]} == 0)); then
        say "no node is running"
        return
    fi
    local deadline=$((SECONDS + STOP_TIMEOUT)) left entry pid
    while true; do
        left=()
        for entry in "${pids[@]}"; do
            n="${entry%%:*}"
            pid="${entry#*:}"
            if kill -0 "${pid}" 2>/dev/null; then
                left+=("${entry}")
            else
                rm -f "${DIR}/node-${n}.pid"
            fi
        done
        ((${#left[@]} > 0)) || break
        if ((SECONDS >= deadline)); then
            for entry in "${left[@]}"; do
                n="${entry%%:*}"
                pid="${entry#*:}"
                echo "local-cluster: node ${n} (pid ${pid}) still runs ${STOP_TIMEOUT}s after SIGINT; SIGKILL" >&2
                kill -KILL "${pid}" 2>/dev/null || true
                rm -f "${DIR}/node-${n}.pid"
            done
            break
        fi
        pids=("${left[@]}")
        sleep 0.2
    done
    say "stopped"
}

cmd_status() {
    load_addrs
    local n running=0
    for ((n = 1; n <= NODES; n++)); do
        find_pid "${n}"
        if [[ -n "${PID}" ]]; then
            echo "node ${n}: running (pid ${PID}) on ${ADDRS[n - 1]}"
            running=$((running + 1))
        else
            echo "node ${n}: stopped (${ADDRS[n - 1]})"
        fi
    done
    if ((running > 0)); then
        resolve_binary
        "${PAYTX}" client --addrs "${ADDRS_CSV}" status
    fi
}

command="${1:-}"
case "${command}" in
    start | stop | restart | status) ;;
    -h | --help | help) usage 0 ;;
    *) usage 2 ;;
esac
DIR="${2:-./paytx-local}"
if [[ "${command}" == start || "${command}" == restart ]]; then
    mkdir -p "${DIR}"
fi
[[ -d "${DIR}" ]] || die "${DIR} does not exist"
# Absolute: generated configs name their data dirs under DIR, and the nodes
# must find them whatever directory this script is run from later.
DIR="$(cd "${DIR}" && pwd)"
readonly DIR
PID=""
ADDRS=()
ADDRS_CSV=""

case "${command}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    restart)
        cmd_stop
        cmd_start
        ;;
    status) cmd_status ;;
    *) usage 2 ;;
esac
