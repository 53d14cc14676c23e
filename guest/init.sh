#!/bin/sh
# The microVM guest's init script (busybox sh), run by /init (guest/preinit.c) once it has made the
# root, /dev, /proc, /sys, /run, the cgroup `pe`, /work's tmpfs and the fifos. One run, then power
# off; see docs/vm.md.
#
# Block devices are found by their virtio serial: pe-image (the image's erofs, read-only), pe-input
# (a newc cpio: run.env, config.json, stdin, work/...) and pe-output (raw, written here as a newc cpio:
# status, stdout, stderr, crun.log, work/...). The host reads only the output device, after poweroff.
export PATH=/bin
# crun runs from the read-only root on ramfs that /init made and need not re-execute a sealed copy
# of itself (CVE-2019-5736): see docs/vm.md.
export _LIBCONTAINER_CLONED_BINARY=1

fail() {
  echo "pe-init: error: $*"
  poweroff -f
}

# Every fork costs the single TCG vCPU several ms: files are read with `read` and tests are
# builtins, not `$(cat ...)`, grep or sed. value_of FILE KEY sets $value to KEY's in a flat-keyed file.
value_of() {
  value=
  while read -r key rest; do
    [ "$key" = "$2" ] && value=$rest
  done < "$1"
}

# Each device's node by its serial, in a variable (an `ln -s` each would be three more processes).
for block in /sys/block/vd*; do
  [ -e "$block/serial" ] || continue
  read -r serial < "$block/serial"  # no newline at its end: read fails but sets $serial
  case $serial in
    pe-image) image_device=/dev/${block##*/} ;;
    pe-input) input_device=/dev/${block##*/} ;;
    pe-output) output_device=/dev/${block##*/} ;;
  esac
done
[ -b "$image_device" ] || fail "no pe-image block device"
[ -b "$input_device" ] || fail "no pe-input block device"
[ -b "$output_device" ] || fail "no pe-output block device"

mount -t erofs -o ro "$image_device" /mnt/image || fail "cannot mount the image"

# A warm pool's guest (pe.wait) waits here for its job: the host writes the input device, then
# sends a line on the console. The kernel may have cached the device's first blocks: drop them.
read -r cmdline < /proc/cmdline
if [ "${cmdline% pe.wait}" != "$cmdline" ]; then  # worker/vm.py appends it last
  mkdir -p /run/warm/root /run/warm/work
  crun run --bundle /etc/pe-warmup warmup > /dev/null 2>&1  # guest/build.py warmup_config
  echo "pe-init: ready"
  read -r -t 600 _ || poweroff -f  # worker/vm.py POOL_WAIT_S: a guest nobody took goes away
  blockdev --flushbufs "$input_device"
fi
# The input archive lands in /run/out: its work/ in the /work tmpfs; config.json makes /run/out the
# bundle. Only status, stdout, stderr, crun.log and work/ go back to the host.
cd /run/out && cpio -i -d < "$input_device" 2> /dev/null || fail "cannot read the input archive"
. /run/out/run.env
mount -o "remount,size=$PE_WORK_BYTES" /run/out/work || fail "cannot size /work"
chown -R "$PE_UID:$PE_UID" /run/out/work
echo "$PE_MEMORY_BYTES" > /sys/fs/cgroup/pe/memory.max
echo "$PE_PIDS" > /sys/fs/cgroup/pe/pids.max

# Each stream is cut one byte past its cap, so the host can tell that the cap was passed; the
# program then gets SIGPIPE, as it would be killed by the sandbox runner.
head -c "$((PE_STREAM_BYTES + 1))" < /run/stdout.fifo > /run/out/stdout &
stdout_pid=$!
head -c "$((PE_STREAM_BYTES + 1))" < /run/stderr.fifo > /run/out/stderr &
stderr_pid=$!

echo "pe-init: running"  # the host starts its run deadline here
read -r started _ < /proc/uptime
crun --log=/run/out/crun.log run --bundle /run/out pe < /run/out/stdin > /run/stdout.fifo 2> /run/stderr.fifo &
crun_pid=$!
# The watchdog waits with the shell's own `read -t` on a fifo nobody writes (`sleep` would be one
# more exec of busybox while crun starts).
(read -r -t "$PE_WALL_S" _ <> /run/watchdog.fifo || { echo 1 > /run/out/timedout && crun kill pe KILL; }) &
watchdog_pid=$!
wait "$crun_pid"
returncode=$?
read -r ended _ < /proc/uptime
kill "$watchdog_pid" 2> /dev/null
wait "$stdout_pid" "$stderr_pid"

timedout=0
[ -e /run/out/timedout ] && timedout=1
read -r peak_bytes < /sys/fs/cgroup/pe/memory.peak
{
  echo "returncode=$returncode"
  echo "started=$started"
  echo "ended=$ended"
  echo "timedout=$timedout"
  value_of /sys/fs/cgroup/pe/cpu.stat usage_usec
  echo "cpu_usec=$value"
  echo "peak_bytes=$peak_bytes"
  value_of /sys/fs/cgroup/pe/memory.events oom_kill
  echo "oom_kill=$value"
} > /run/out/status

cd /run/out && find status stdout stderr crun.log work | cpio -o -H newc > "$output_device" 2> /dev/null \
  || echo "pe-init: error: the output device is full"
sync
echo "pe-init: done"
poweroff -f
