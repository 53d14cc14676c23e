/* The guest's /init: the root, mounts, cgroup, fifos and lo that guest/init.sh needs, made with
 * plain system calls; then it execs the script (/etc/pe-init.sh). Done by the script itself, these steps
 * were eleven forks and execs of busybox, each ~5-20 ms of the TCG vCPU. Built static by
 * guest/build.py; see docs/vm.md. */
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static void fail(const char *what) {
    printf("pe-init: error: %s: %s\n", what, strerror(errno));
    fflush(stdout);
    reboot(RB_POWER_OFF);
    _exit(1);
}

static void mount_or_fail(const char *source, const char *target, const char *type, unsigned long flags,
                          const char *options) {
    if (mount(source, target, type, flags, options) != 0) fail(target);
}

static void write_or_fail(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) fail(path);
    close(fd);
}

static void mkdir_or_fail(const char *path, mode_t mode) {
    if (mkdir(path, mode) != 0) fail(path);
}

int main(void) {
    /* crun's pivot_root cannot leave rootfs (the root of the mount tree): a bind mount of it is
     * moved over / and everything goes on chrooted in it (nothing is copied), read-only below; the
     * writable places are tmpfs mounts. Read-only and on ramfs (rootfstype=ramfs), crun's binary
     * needs no sealed copy of itself (CVE-2019-5736; docs/vm.md). */
    mount_or_fail("/", "/newroot", NULL, MS_BIND, NULL);
    if (chdir("/newroot") != 0) fail("/newroot");
    mount_or_fail(".", "/", NULL, MS_MOVE, NULL);
    if (chroot(".") != 0 || chdir("/") != 0) fail("chroot");

    mount_or_fail("dev", "/dev", "devtmpfs", 0, NULL);
    mount_or_fail("proc", "/proc", "proc", 0, NULL);
    mount_or_fail(NULL, "/", NULL, MS_REMOUNT | MS_BIND | MS_RDONLY, NULL);
    mount_or_fail("sys", "/sys", "sysfs", 0, NULL);
    mount_or_fail("run", "/run", "tmpfs", 0, "mode=0755");

    /* The job-independent part: the cgroup crun puts the container under (pe/run), /work's tmpfs
     * (sized once the job is known) and the fifos of the program's streams and the watchdog.
     * Overcommit as on a big host: the cgroup's limit, not the VM's size, refuses memory. */
    write_or_fail("/proc/sys/vm/overcommit_memory", "1");
    mount_or_fail("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL);
    write_or_fail("/sys/fs/cgroup/cgroup.subtree_control", "+cpu +memory +pids");
    mkdir_or_fail("/sys/fs/cgroup/pe", 0755);
    mkdir_or_fail("/run/out", 0755);
    mkdir_or_fail("/run/out/work", 0755);
    mount_or_fail("work", "/run/out/work", "tmpfs", 0, "mode=0755");
    const char *fifos[] = {"/run/stdout.fifo", "/run/stderr.fifo", "/run/watchdog.fifo"};
    for (size_t i = 0; i < sizeof fifos / sizeof *fifos; i++)
        if (mkfifo(fifos[i], 0644) != 0) fail(fifos[i]);

    /* The program shares this network namespace (guest/oci.py network_namespace): its only
     * interface, lo, is brought up as crun does in a fresh one. */
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq lo = {.ifr_name = "lo", .ifr_flags = IFF_UP};
    if (sock < 0 || ioctl(sock, SIOCSIFFLAGS, &lo) != 0) fail("lo");
    close(sock);

    execl("/bin/sh", "sh", "/etc/pe-init.sh", (char *)NULL);
    fail("/bin/sh");
}
