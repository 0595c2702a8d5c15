#!/usr/bin/env bash
# Proves the broker does not poll: an idle system with 10,000 registered periodic tasks (none due
# within the window) is traced with `strace -c` on every one of its threads for 60 s; the syscall
# count should be 0 (no wake-ups: nothing is due).
# With dbus-daemon, gdbus and python-dbusmock (BTB_DBUSMOCK_PYTHON, which `make bench` sets), the
# idle trace runs a second time on a private system bus carrying NetworkManager, UPower and logind
# mocks that change nothing: the D-Bus watcher must not wake up either.
#   bash bench/idle_strace.sh [SECONDS] [TASKS]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
tasks=${2:-10000}
command -v strace >/dev/null || { echo "strace is missing (apt-get install strace)"; exit 2; }
cargo build -q --release -p btb-ffi
target=${CARGO_TARGET_DIR:-$PWD/target}
work=$(mktemp -d)
pid=
daemons=()
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    for d in "${daemons[@]}"; do kill "$d" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/lib"
ln -sf "$target/release/libbtb.so" "$work/lib/libbtb.so"
ln -sf "$target/release/libbtb.so" "$work/lib/libbtb.so.0"
cc -std=c11 -O2 -Wall -Wextra -Werror -Iinclude bench/idle.c -L"$work/lib" -Wl,-rpath,"$work/lib" -lbtb -o "$work/idle"
export XDG_RUNTIME_DIR="$work/run"
mkdir -m 0700 "$XDG_RUNTIME_DIR"

# trace SECONDS LABEL [CALENDAR]: starts the idle broker, traces all its threads, prints the count.
trace() {
    local secs=$1 label=$2
    rm -f "$work/btb.sqlite3"*
    coproc IDLE { exec "$work/idle" "$work/btb.sqlite3" "$tasks" "${@:3}"; }
    pid=$IDLE_PID
    read -r line <&"${IDLE[0]}"
    local nthreads
    nthreads=$(ls /proc/"$pid"/task | wc -l)
    [ "$nthreads" -ge 3 ] || { echo "expected the broker's threads in pid $pid"; exit 1; }
    echo "$label: $line, $tasks periodic tasks, threads: $(cat /proc/"$pid"/task/*/comm | paste -sd' ' -)"
    timeout -s INT "$secs" strace -q -f -c -p "$pid" -o "$work/strace.txt" || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    pid=
    calls=$(awk '$NF=="total" {print $4}' "$work/strace.txt")
    calls=${calls:-0}
    sed 's/^/    /' "$work/strace.txt"
    echo "$label: $calls syscalls in $secs s, all threads"
}

# Control: one task due every second must show up, or the tracer sees nothing.
trace 5 "control (one task every second)" "*:*:0/1"
control=$calls
[ "$control" -gt 0 ] || { echo "the control run showed no syscalls: the tracer is not seeing the broker"; exit 1; }
trace "$secs" "idle"
echo "RESULT idle broker with $tasks periodic tasks: $calls syscalls in $secs s (control: $control in 5 s)"

python=${BTB_DBUSMOCK_PYTHON:-$PWD/.venv-dbusmock/bin/python}
if ! command -v dbus-daemon >/dev/null || ! command -v gdbus >/dev/null || \
   ! "$python" -c 'import dbusmock' 2>/dev/null; then
    echo "*** SKIPPED: the idle trace with a system bus (needs dbus-daemon, gdbus and python-dbusmock; make bench sets it up)"
    exit 0
fi
mkfifo "$work/bus.addr"
dbus-daemon --session --nofork --print-address=1 --address="unix:path=$work/bus.sock" \
    >"$work/bus.addr" 2>/dev/null &
daemons+=($!)
read -r address <"$work/bus.addr"
export DBUS_SYSTEM_BUS_ADDRESS=$address
for mock in networkmanager:org.freedesktop.NetworkManager upower:org.freedesktop.UPower \
            logind:org.freedesktop.login1; do
    "$python" -m dbusmock --system --template "${mock%%:*}" >/dev/null 2>&1 &
    daemons+=($!)
    gdbus wait --system --timeout 30 "${mock#*:}"
done
trace "$secs" "idle, system bus"
echo "RESULT idle broker with $tasks periodic tasks and a system bus (NetworkManager, UPower, logind): $calls syscalls in $secs s"
