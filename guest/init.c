/* The microVM guest's /init: one run, then power off (docs/vm.md, "Devices and the run's life").
 *
 * It makes the root and the mounts, finds the three block devices by their virtio serial, mounts
 * the image, [a pool guest: runs a warm-up container, prints "pe-init: ready" and waits for a line
 * on the console], extracts the input archive (run.env, config.json, stdin, work/...) into the
 * bundle /run/out, runs `crun run` with the program's streams through pipes it reads itself, kills
 * the container at the wall limit, and writes the output archive (status, stdout, stderr,
 * crun.log, work/...) to the output device. worker/vm.py writes the input, follows the console's
 * "pe-init: ..." lines and reads the output.
 *
 * Every process costs the single TCG vCPU 5-10 ms, so all of this is done here with plain system
 * calls: the only processes the guest starts are crun's (the job's `crun run`, the warm-up's, and
 * `crun kill` at the wall limit). Built static by guest/build.py (gcc -static -Os). */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <net/if.h>
#include <poll.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <stdnoreturn.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/pidfd.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define BUNDLE "/run/out"      /* the input lands here; config.json makes it crun's bundle */
#define JOB_WAIT_MS 600000     /* worker/vm.py POOL_WAIT_S: a pool guest nobody took goes away */
#define KILL_AGAIN_MS 1000     /* `crun kill` once more if crun still runs this long after */
#define NEWC_HEADER_BYTES 110  /* "070701" and 13 fields of 8 hex digits */
#define NEWC_MAGIC "070701"
#define NEWC_TRAILER "TRAILER!!!"

/* crun runs from the read-only root on ramfs that make_root makes, so it need not re-execute a
 * sealed copy of itself (CVE-2019-5736; docs/vm.md, "crun's self-copy"). */
static char *const crun_environment[] = {"PATH=/bin", "_LIBCONTAINER_CLONED_BINARY=1", NULL};

/* ---- The console and failing ---- */

/* A line "pe-init: ..." on the console, which worker/vm.py follows as it comes. */
static void say(const char *format, ...) {
    va_list args;
    va_start(args, format);
    fputs("pe-init: ", stdout);
    vprintf(format, args);
    va_end(args);
    putchar('\n');
    fflush(stdout);
}

static noreturn void power_off(void) {
    reboot(RB_POWER_OFF);
    _exit(1); /* PID 1 exiting panics the kernel, which the host reports as well */
}

/* Before the run, any failure ends the guest with a line saying what failed. */
static noreturn void die(const char *what, const char *why) {
    say("error: %s: %s", what, why);
    power_off();
}

static noreturn void fail(const char *what) {
    die(what, strerror(errno));
}

/* ---- Small file and mount helpers ---- */

static void mount_or_fail(const char *source, const char *target, const char *type, unsigned long flags,
                          const char *options) {
    if (mount(source, target, type, flags, options) != 0) fail(target);
}

static void mkdir_or_fail(const char *path, mode_t mode) {
    if (mkdir(path, mode) != 0) fail(path);
}

static int open_or_fail(const char *path, int flags) {
    int fd = open(path, flags | O_CLOEXEC, 0644);
    if (fd < 0) fail(path);
    return fd;
}

static void write_all(int fd, const char *data, size_t size, const char *what) {
    while (size > 0) {
        ssize_t done = write(fd, data, size);
        if (done < 0) fail(what);
        data += done;
        size -= done;
    }
}

static void write_or_fail(const char *path, const char *text) {
    int fd = open_or_fail(path, O_WRONLY);
    write_all(fd, text, strlen(text), path);
    close(fd);
}

/* A small file's text without its final newline; false (and "") if it cannot be read. */
static bool read_text(const char *path, char *text, size_t size) {
    text[0] = '\0';
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return false;
    ssize_t got = read(fd, text, size - 1);
    close(fd);
    if (got < 0) return false;
    text[got] = '\0';
    if (got > 0 && text[got - 1] == '\n') text[got - 1] = '\0';
    return true;
}

/* The value of `key` in `text`, lines of key, separator, value (run.env's KEY=value, a cgroup's
 * flat-keyed "key value"), copied into `value`; false if no line has it. */
static bool value_of(const char *text, const char *key, char separator, char *value, size_t size) {
    size_t length = strlen(key);
    for (const char *line = text; line != NULL;) {
        if (strncmp(line, key, length) == 0 && line[length] == separator) {
            const char *start = line + length + 1;
            snprintf(value, size, "%.*s", (int)strcspn(start, "\n"), start);
            return true;
        }
        line = strchr(line, '\n');
        if (line != NULL) line++;
    }
    value[0] = '\0';
    return false;
}

/* Calls `visit` on `path` and, for a directory, on everything under it, each directory before its
 * contents as `find` lists them; symlinks are not followed, paths past PATH_MAX are left out.
 * `path` is a PATH_MAX buffer, restored on return. */
static void walk(char *path, void (*visit)(const char *, const struct stat *, void *), void *context) {
    struct stat status;
    if (lstat(path, &status) != 0) return;
    visit(path, &status, context);
    DIR *directory = S_ISDIR(status.st_mode) ? opendir(path) : NULL;
    if (directory == NULL) return;
    size_t length = strlen(path);
    for (struct dirent *entry; (entry = readdir(directory)) != NULL;) {
        if (strcmp(entry->d_name, ".") == 0 || strcmp(entry->d_name, "..") == 0) continue;
        if (snprintf(path + length, PATH_MAX - length, "/%s", entry->d_name) < (int)(PATH_MAX - length))
            walk(path, visit, context);
    }
    path[length] = '\0';
    closedir(directory);
}

/* The NUL bytes after `size` bytes of a newc header, name or data: each ends on a multiple of 4. */
static size_t padding(size_t size) {
    return (4 - size % 4) % 4;
}

static long long now_ms(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return now.tv_sec * 1000LL + now.tv_nsec / 1000000;
}

/* The guest's uptime as /proc/uptime's first field gives it ("1.42"): the status's clock. */
static void read_uptime(char *uptime, size_t size) {
    if (!read_text("/proc/uptime", uptime, size)) fail("/proc/uptime");
    uptime[strcspn(uptime, " ")] = '\0';
}

/* ---- The guest's own setup, the same for every job ---- */

static void make_root(void) {
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
}

static void make_job_places(void) {
    /* The cgroup crun puts the container under (pe/run) and /work's tmpfs, sized once the job is
     * known. Overcommit as on a big host: the cgroup's limit, not the VM's size, refuses memory. */
    write_or_fail("/proc/sys/vm/overcommit_memory", "1");
    mount_or_fail("cgroup2", "/sys/fs/cgroup", "cgroup2", 0, NULL);
    write_or_fail("/sys/fs/cgroup/cgroup.subtree_control", "+cpu +memory +pids");
    mkdir_or_fail("/sys/fs/cgroup/pe", 0755);
    mkdir_or_fail(BUNDLE, 0755);
    mkdir_or_fail(BUNDLE "/work", 0755);
    mount_or_fail("work", BUNDLE "/work", "tmpfs", 0, "mode=0755");
}

static void bring_up_lo(void) {
    /* The program shares this network namespace (guest/oci.py network_namespace): its only
     * interface, lo, is brought up as crun does in a fresh one. */
    int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    struct ifreq lo = {.ifr_name = "lo", .ifr_flags = IFF_UP};
    if (sock < 0 || ioctl(sock, SIOCSIFFLAGS, &lo) != 0) fail("lo");
    close(sock);
}

#define DEVICE_NODE_BYTES (sizeof "/dev/" + NAME_MAX)

struct devices {
    char image[DEVICE_NODE_BYTES], input[DEVICE_NODE_BYTES], output[DEVICE_NODE_BYTES];
};

/* Each device's node by the serial worker/vm.py gives it. */
static struct devices find_devices(void) {
    struct devices found = {"", "", ""};
    DIR *blocks = opendir("/sys/block");
    if (blocks == NULL) fail("/sys/block");
    for (struct dirent *entry; (entry = readdir(blocks)) != NULL;) {
        char path[PATH_MAX], serial[64];
        snprintf(path, sizeof path, "/sys/block/%s/serial", entry->d_name);
        if (strncmp(entry->d_name, "vd", 2) != 0 || !read_text(path, serial, sizeof serial)) continue;
        char *node = strcmp(serial, "pe-image") == 0    ? found.image
                     : strcmp(serial, "pe-input") == 0  ? found.input
                     : strcmp(serial, "pe-output") == 0 ? found.output
                                                        : NULL;
        if (node != NULL) snprintf(node, sizeof found.image, "/dev/%s", entry->d_name);
    }
    closedir(blocks);
    if (found.image[0] == '\0') die("pe-image", "no block device has this serial");
    if (found.input[0] == '\0') die("pe-input", "no block device has this serial");
    if (found.output[0] == '\0') die("pe-output", "no block device has this serial");
    return found;
}

/* ---- crun ---- */

/* Starts crun with these standard streams. */
static pid_t spawn_crun(char *argv[], int in, int out, int err) {
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, in, 0);
    posix_spawn_file_actions_adddup2(&actions, out, 1);
    posix_spawn_file_actions_adddup2(&actions, err, 2);
    pid_t pid;
    int error = posix_spawn(&pid, "/bin/crun", &actions, NULL, argv, crun_environment);
    posix_spawn_file_actions_destroy(&actions);
    if (error != 0) {
        errno = error;
        fail("/bin/crun");
    }
    return pid;
}

/* `$?` as a shell gives it: the exit status, or 128 + the signal. */
static int shell_status(int status) {
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

/* ---- A pool guest's wait ---- */

static bool is_pool_guest(void) {
    const char *flag = " pe.wait"; /* worker/vm.py puts it last on the kernel's command line */
    char command_line[4096];
    read_text("/proc/cmdline", command_line, sizeof command_line);
    size_t length = strlen(command_line);
    return length >= strlen(flag) && strcmp(command_line + length - strlen(flag), flag) == 0;
}

/* One container like a job's (guest/build.py warmup_config), so that the first container's one-off
 * costs in the kernel and crun are not the job's. Its program does not exist: it fails at tini's
 * exec, and its output is discarded. */
static void warm_up(void) {
    mkdir_or_fail("/run/warm", 0755);
    mkdir_or_fail("/run/warm/root", 0755);
    mkdir_or_fail("/run/warm/work", 0755);
    int null = open_or_fail("/dev/null", O_RDWR);
    char *argv[] = {"crun", "run", "--bundle", "/etc/pe-warmup", "warmup", NULL};
    waitpid(spawn_crun(argv, null, null, null), NULL, 0);
    close(null);
}

/* The host writes the input device, then sends a line on the console; a guest nobody takes
 * powers off. */
static void wait_for_the_job(void) {
    long long deadline = now_ms() + JOB_WAIT_MS;
    for (char byte = 0; byte != '\n';) {
        struct pollfd console = {.fd = 0, .events = POLLIN};
        long long left = deadline - now_ms();
        if (left <= 0 || poll(&console, 1, left) != 1 || read(0, &byte, 1) != 1) power_off();
    }
}

/* ---- The input archive (a newc cpio from worker/vm.py) ---- */

struct reader {
    int fd;
    size_t start, end;
    char buffer[1 << 16];
};

/* The next `size` bytes of the input: copied to `to`, else written to `fd`, else skipped (fd -1). */
static void take(struct reader *in, size_t size, char *to, int fd) {
    while (size > 0) {
        if (in->start == in->end) {
            ssize_t got = read(in->fd, in->buffer, sizeof in->buffer);
            if (got < 0) fail("the input archive");
            if (got == 0) die("the input archive", "cut short");
            in->start = 0;
            in->end = got;
        }
        size_t part = in->end - in->start < size ? in->end - in->start : size;
        if (to != NULL) {
            memcpy(to, in->buffer + in->start, part);
            to += part;
        } else if (fd >= 0) {
            write_all(fd, in->buffer + in->start, part, "an input file");
        }
        in->start += part;
        size -= part;
    }
}

/* Field `index` of a newc header (0 ino, 1 mode, ..., 6 file size, ..., 11 name size). */
static unsigned long newc_field(const char *header, int index) {
    char digits[9];
    memcpy(digits, header + 6 + 8 * index, 8);
    digits[8] = '\0';
    char *end;
    unsigned long value = strtoul(digits, &end, 16);
    if (*end != '\0') die("the input archive", "a malformed header");
    return value;
}

/* Names stay in the bundle: relative, without a ".." component. */
static bool stays_inside(const char *name) {
    if (name[0] == '/') return false;
    for (const char *part = name;;) {
        const char *end = strchrnul(part, '/');
        if (end - part == 2 && strncmp(part, "..", 2) == 0) return false;
        if (*end == '\0') return true;
        part = end + 1;
    }
}

/* mkdir -p of the directories `name` is in (cpio -d). */
static void make_parents(char *name) {
    for (char *slash = strchr(name, '/'); slash != NULL; slash = strchr(slash + 1, '/')) {
        *slash = '\0';
        bool made = mkdir(name, 0755) == 0 || errno == EEXIST;
        *slash = '/';
        if (!made) fail(name);
    }
}

/* One member into the current directory: regular files and directories with the archive's mode;
 * anything else is skipped. */
static void extract(struct reader *in, char *name, mode_t mode, size_t size) {
    int fd = -1;
    if (S_ISDIR(mode)) {
        make_parents(name);
        if ((mkdir(name, 0700) != 0 && errno != EEXIST) || chmod(name, mode & 07777) != 0) fail(name);
    } else if (S_ISREG(mode)) {
        make_parents(name);
        fd = open(name, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
        if (fd < 0 || fchmod(fd, mode & 07777) != 0) fail(name);
    }
    take(in, size, NULL, fd);
    if (fd >= 0) close(fd);
}

static void read_input(int device) {
    static struct reader in; /* 64 KiB: not on the stack */
    in.fd = device;
    for (;;) {
        char header[NEWC_HEADER_BYTES], name[PATH_MAX];
        take(&in, sizeof header, header, -1);
        if (memcmp(header, NEWC_MAGIC, 6) != 0) die("the input archive", "not a newc cpio");
        mode_t mode = newc_field(header, 1);
        size_t size = newc_field(header, 6), name_size = newc_field(header, 11);
        if (name_size < 2 || name_size > sizeof name) die("the input archive", "a name of a bad size");
        take(&in, name_size, name, -1);
        if (name[name_size - 1] != '\0') die("the input archive", "a name without its end");
        take(&in, padding(NEWC_HEADER_BYTES + name_size), NULL, -1);
        if (strcmp(name, NEWC_TRAILER) == 0) return;
        if (!stays_inside(name)) die("the input archive", "a name outside the bundle");
        extract(&in, name, mode, size);
        take(&in, padding(size), NULL, -1);
    }
}

/* ---- The job ---- */

struct job {
    long long wall_ms, stream_bytes, memory_bytes, work_bytes, pids, uid;
};

static long long job_number(const char *env, const char *key) {
    char text[64], *end;
    if (!value_of(env, key, '=', text, sizeof text)) die(key, "not in run.env");
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || value < 0) die(key, "not a number");
    return value;
}

/* run.env: KEY=value lines (worker/vm.py _input_entries), read here, never run by a shell. */
static struct job read_job(void) {
    char env[4096], wall_s[64], *end;
    if (!read_text(BUNDLE "/run.env", env, sizeof env)) fail(BUNDLE "/run.env");
    if (!value_of(env, "PE_WALL_S", '=', wall_s, sizeof wall_s)) die("PE_WALL_S", "not in run.env");
    double wall = strtod(wall_s, &end);
    if (end == wall_s || *end != '\0' || !(wall >= 0)) die("PE_WALL_S", "not a number");
    return (struct job){
        .wall_ms = wall * 1000 + 0.5,
        .stream_bytes = job_number(env, "PE_STREAM_BYTES"),
        .memory_bytes = job_number(env, "PE_MEMORY_BYTES"),
        .work_bytes = job_number(env, "PE_WORK_BYTES"),
        .pids = job_number(env, "PE_PIDS"),
        .uid = job_number(env, "PE_UID"),
    };
}

static void give_to_uid(const char *path, const struct stat *status, void *owner) {
    uid_t uid = *(uid_t *)owner;
    if (lchown(path, uid, uid) != 0) fail(path);
}

/* /work's size and owner (chown -R: the program runs as that uid in the guest), the cgroup's
 * limits. */
static void prepare_job(const struct job *job) {
    char text[64], path[PATH_MAX] = BUNDLE "/work";
    snprintf(text, sizeof text, "size=%lld", job->work_bytes);
    mount_or_fail(NULL, path, NULL, MS_REMOUNT, text);
    uid_t owner = job->uid;
    walk(path, give_to_uid, &owner);
    snprintf(text, sizeof text, "%lld", job->memory_bytes);
    write_or_fail("/sys/fs/cgroup/pe/memory.max", text);
    snprintf(text, sizeof text, "%lld", job->pids);
    write_or_fail("/sys/fs/cgroup/pe/pids.max", text);
}

/* One of the program's streams: a pipe read into a file, up to `left` more bytes. */
struct stream {
    int pipe, file;
    long long left;
};

/* The pipe's write end, for crun. The file takes one byte past the cap: that byte tells the host
 * that the cap was passed. */
static int open_stream(struct stream *stream, const char *path, long long cap) {
    int ends[2];
    if (pipe2(ends, O_CLOEXEC) != 0) fail("pipe");
    stream->pipe = ends[0];
    stream->file = open_or_fail(path, O_WRONLY | O_CREAT | O_TRUNC);
    stream->left = cap + 1;
    return ends[1];
}

/* Moves what the pipe holds into the file. At the end of the stream or its cap the pipe is closed,
 * as `head -c` did: past the cap the program's next write gets SIGPIPE, which ends it as the
 * sandbox runner would. */
static void drain(struct stream *stream) {
    char buffer[1 << 16];
    size_t want = stream->left < (long long)sizeof buffer ? (size_t)stream->left : sizeof buffer;
    ssize_t got = read(stream->pipe, buffer, want);
    if (got > 0) {
        write_all(stream->file, buffer, got, "a stream's file");
        stream->left -= got;
    }
    if (got <= 0 || stream->left == 0) {
        close(stream->pipe);
        close(stream->file);
        stream->pipe = -1;
    }
}

static void kill_container(void) {
    /* Its process is not waited for: the guest powers off after this run anyway. */
    char *argv[] = {"crun", "kill", "pe", "KILL", NULL};
    spawn_crun(argv, 0, 1, 2);
}

struct outcome {
    int returncode;
    bool timedout;
    char started[32], ended[32];
};

/* `crun run` of the bundle, its streams drained until both end, the wall limit kept from its
 * start. */
static struct outcome run_job(const struct job *job) {
    struct outcome outcome = {.timedout = false};
    struct stream streams[2];
    int out = open_stream(&streams[0], BUNDLE "/stdout", job->stream_bytes);
    int err = open_stream(&streams[1], BUNDLE "/stderr", job->stream_bytes);
    int in = open_or_fail(BUNDLE "/stdin", O_RDONLY);
    say("running"); /* the host starts its run deadline here */
    read_uptime(outcome.started, sizeof outcome.started);
    char *argv[] = {"crun", "--log=" BUNDLE "/crun.log", "run", "--bundle", BUNDLE, "pe", NULL};
    pid_t crun = spawn_crun(argv, in, out, err);
    long long kill_at = now_ms() + job->wall_ms;
    close(in);
    close(out);
    close(err); /* the pipes end once crun and the program have closed theirs */
    int exit_fd = pidfd_open(crun, 0);
    if (exit_fd < 0) fail("pidfd_open");
    bool running = true;
    while (running || streams[0].pipe >= 0 || streams[1].pipe >= 0) {
        if (running && now_ms() >= kill_at) { /* checked first: streams that are always ready */
            outcome.timedout = true;
            kill_container();
            kill_at += KILL_AGAIN_MS;
        }
        struct pollfd ready[] = {
            {.fd = streams[0].pipe, .events = POLLIN}, /* a negative fd is left out by poll */
            {.fd = streams[1].pipe, .events = POLLIN},
            {.fd = running ? exit_fd : -1, .events = POLLIN},
        };
        long long timeout_ms = -1; /* until a stream or crun's exit is ready */
        if (running) timeout_ms = kill_at > now_ms() ? kill_at - now_ms() : 0;
        if (poll(ready, 3, timeout_ms) < 0) fail("poll");
        for (int i = 0; i < 2; i++)
            if (ready[i].revents != 0) drain(&streams[i]);
        if (ready[2].revents != 0) {
            int status;
            if (waitpid(crun, &status, 0) != crun) fail("waitpid");
            read_uptime(outcome.ended, sizeof outcome.ended);
            outcome.returncode = shell_status(status);
            running = false;
            close(exit_fd);
        }
    }
    return outcome;
}

static void write_status(const struct outcome *outcome) {
    char text[4096], cpu_usec[32], peak_bytes[32], oom_kill[32];
    read_text("/sys/fs/cgroup/pe/cpu.stat", text, sizeof text);
    value_of(text, "usage_usec", ' ', cpu_usec, sizeof cpu_usec);
    read_text("/sys/fs/cgroup/pe/memory.events", text, sizeof text);
    value_of(text, "oom_kill", ' ', oom_kill, sizeof oom_kill);
    read_text("/sys/fs/cgroup/pe/memory.peak", peak_bytes, sizeof peak_bytes);
    int size = snprintf(text, sizeof text,
                        "returncode=%d\nstarted=%s\nended=%s\ntimedout=%d\n"
                        "cpu_usec=%s\npeak_bytes=%s\noom_kill=%s\n",
                        outcome->returncode, outcome->started, outcome->ended, outcome->timedout, cpu_usec,
                        peak_bytes, oom_kill);
    int fd = open_or_fail(BUNDLE "/status", O_WRONLY | O_CREAT | O_TRUNC);
    write_all(fd, text, size, BUNDLE "/status");
    close(fd);
}

/* ---- The output archive: a newc cpio written straight to the output device ---- */

struct archive {
    int fd;
    bool full; /* a write failed: the device is full, the archive stops there */
    unsigned inode;
    size_t used;
    char buffer[1 << 16];
};

static void flush(struct archive *out) {
    for (size_t done = 0; done < out->used && !out->full;) {
        ssize_t wrote = write(out->fd, out->buffer + done, out->used - done);
        if (wrote <= 0) out->full = true;
        else done += wrote;
    }
    out->used = 0;
}

static void put(struct archive *out, const char *data, size_t size) {
    while (size > 0 && !out->full) {
        size_t part = sizeof out->buffer - out->used < size ? sizeof out->buffer - out->used : size;
        if (data != NULL) memcpy(out->buffer + out->used, data, part);
        else memset(out->buffer + out->used, 0, part);
        out->used += part;
        if (data != NULL) data += part;
        size -= part;
        if (out->used == sizeof out->buffer) flush(out);
    }
}

static void put_header(struct archive *out, const char *name, mode_t mode, const struct stat *status,
                       size_t size) {
    char header[NEWC_HEADER_BYTES + 1];
    size_t name_size = strlen(name) + 1;
    /* ino, mode, uid, gid, nlink (1: each member carries its own data, a reader joins no hard
     * links), mtime, file size, four device numbers (none), name size, check (none). */
    snprintf(header, sizeof header, NEWC_MAGIC "%08X%08X%08X%08X00000001%08X%08X" "00000000" "00000000"
             "00000000" "00000000%08X00000000", ++out->inode, mode, status->st_uid, status->st_gid,
             (unsigned)status->st_mtime, (unsigned)size, (unsigned)name_size);
    put(out, header, NEWC_HEADER_BYTES);
    put(out, name, name_size);
    put(out, NULL, padding(NEWC_HEADER_BYTES + name_size));
}

/* One member from the bundle: a regular file's data, a symlink's target, else the header alone
 * (directories; the host leaves out what is neither a file nor a directory, and says so). */
static void add(const char *name, const struct stat *status, void *archive) {
    struct archive *out = archive;
    if (out->full) return;
    if (S_ISLNK(status->st_mode)) {
        char target[PATH_MAX];
        ssize_t length = readlink(name, target, sizeof target);
        if (length < 0) return;
        put_header(out, name, status->st_mode, status, length);
        put(out, target, length);
        put(out, NULL, padding(length));
        return;
    }
    size_t size = S_ISREG(status->st_mode) ? status->st_size : 0; /* under 4 GiB: /work is <= 2 GiB */
    int fd = S_ISREG(status->st_mode) ? open(name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC) : -1;
    if (S_ISREG(status->st_mode) && fd < 0) return;
    put_header(out, name, status->st_mode, status, size);
    for (size_t left = size; left > 0 && !out->full;) {
        char chunk[1 << 16];
        ssize_t got = read(fd, chunk, left < sizeof chunk ? left : sizeof chunk);
        if (got <= 0) { /* the file shrank since lstat: the header's size is kept, zeros fill it */
            put(out, NULL, left);
            break;
        }
        put(out, chunk, got);
        left -= got;
    }
    put(out, NULL, padding(size));
    if (fd >= 0) close(fd);
}

/* status, stdout, stderr, crun.log and work/... (names relative to the bundle, the current
 * directory), then the trailer; false if the device was full. */
static bool write_output(const char *device) {
    static struct archive out; /* 64 KiB: not on the stack */
    out.fd = open_or_fail(device, O_WRONLY);
    const char *members[] = {"status", "stdout", "stderr", "crun.log", "work"};
    for (size_t i = 0; i < sizeof members / sizeof *members; i++) {
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s", members[i]);
        walk(path, add, &out);
    }
    static const struct stat nothing;
    put_header(&out, NEWC_TRAILER, 0, &nothing, 0);
    flush(&out);
    fsync(out.fd);
    close(out.fd);
    return !out.full;
}

int main(void) {
    make_root();
    make_job_places();
    bring_up_lo();
    struct devices devices = find_devices();
    mount_or_fail(devices.image, "/mnt/image", "erofs", MS_RDONLY, NULL);
    if (is_pool_guest()) {
        warm_up();
        say("ready");
        wait_for_the_job();
    }
    int input = open_or_fail(devices.input, O_RDONLY);
    /* A pool guest's kernel may have cached the device's first blocks before the host wrote it. */
    if (ioctl(input, BLKFLSBUF, 0) != 0) fail(devices.input);
    if (chdir(BUNDLE) != 0) fail(BUNDLE); /* the archives' names are relative to the bundle */
    read_input(input);
    close(input);
    struct job job = read_job();
    prepare_job(&job);
    struct outcome outcome = run_job(&job);
    write_status(&outcome);
    if (!write_output(devices.output)) say("error: the output device is full");
    say("done");
    power_off();
}
