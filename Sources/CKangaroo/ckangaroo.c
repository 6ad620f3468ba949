// Container init and small syscall wrappers. See include/ckangaroo.h.
// Only async-signal-safe libc calls (plus snprintf on stack buffers) run in
// the cloned child, and no glibc call that takes a process-wide lock (set*id,
// fork, strerror): the parent (the node daemon) is multi-threaded when it
// clones, and a raw clone runs none of glibc's fork handlers.
#define _GNU_SOURCE
#include <sys/vfs.h>
#include "ckangaroo.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/loop.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#ifndef PR_CAP_AMBIENT
#define PR_CAP_AMBIENT 47
#define PR_CAP_AMBIENT_RAISE 2
#endif

// ---------------------------------------------------------------- wrappers

int kr_pivot_root(const char *new_root, const char *put_old) {
    return (int)syscall(SYS_pivot_root, new_root, put_old);
}

int kr_setns(int fd, int nstype) { return setns(fd, nstype); }
int kr_unshare(int flags) { return unshare(flags); }

int kr_loop_attach(int fd, unsigned long long offset, unsigned long long size) {
    int control = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
    if (control < 0) return -errno;
    for (int attempt = 0; attempt < 64; attempt++) {
        int number = ioctl(control, LOOP_CTL_GET_FREE);
        if (number < 0) { int e = errno; close(control); return -e; }
        char path[32];
        snprintf(path, sizeof path, "/dev/loop%d", number);
        int dev = open(path, O_RDWR | O_CLOEXEC);
        if (dev < 0) { if (errno == ENOENT) continue; int e = errno; close(control); return -e; }
        struct loop_config config;
        memset(&config, 0, sizeof config);
        config.fd = (unsigned)fd;
        config.block_size = 4096;
        config.info.lo_offset = offset;
        config.info.lo_sizelimit = size;
        int rc = ioctl(dev, LOOP_CONFIGURE, &config);
        int e = errno;
        close(dev);
        if (rc == 0) { close(control); return number; }
        if (e != EBUSY) { close(control); return -e; }
    }
    close(control);
    return -EBUSY;
}

static int write_text(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    ssize_t n = write(fd, text, strlen(text));
    int e = errno;
    close(fd);
    return n == (ssize_t)strlen(text) ? 0 : -e;
}

int kr_idmapped_mount(const char *source, const char *target, unsigned base, unsigned count) {
    // A child in a new user namespace holds it while its maps are written
    // and it is opened, then is killed. (Not told to exit by closing a
    // pipe: a process another thread clones meanwhile keeps a copy of the
    // write end until it execs, a container's init until it is started, so
    // the end of file could come late or never.)
    int ready[2];
    if (pipe2(ready, O_CLOEXEC) != 0) return -errno;
    pid_t pid = fork();
    if (pid < 0) { int e = errno; close(ready[0]); close(ready[1]); return -e; }
    if (pid == 0) {
        close(ready[0]);
        char c = unshare(CLONE_NEWUSER) == 0 ? 'y' : 'n';
        (void)!write(ready[1], &c, 1);
        for (;;) pause();
    }
    close(ready[1]);
    char c = 0;
    ssize_t got;
    do { got = read(ready[0], &c, 1); } while (got < 0 && errno == EINTR);
    int rc = got == 1 && c == 'y' ? 0 : -EPERM;
    close(ready[0]);
    char path[64], map[64];
    snprintf(map, sizeof map, "0 %u %u\n", base, count);
    if (rc == 0) { snprintf(path, sizeof path, "/proc/%d/uid_map", pid); rc = write_text(path, map); }
    if (rc == 0) { snprintf(path, sizeof path, "/proc/%d/setgroups", pid); rc = write_text(path, "deny"); }
    if (rc == 0) { snprintf(path, sizeof path, "/proc/%d/gid_map", pid); rc = write_text(path, map); }
    int ns = -1;
    if (rc == 0) {
        snprintf(path, sizeof path, "/proc/%d/ns/user", pid);
        ns = open(path, O_RDONLY | O_CLOEXEC);
        if (ns < 0) rc = -errno;
    }
    kill(pid, SIGKILL);
    while (waitpid(pid, NULL, 0) < 0 && errno == EINTR) {}
    if (rc != 0) { if (ns >= 0) close(ns); return rc; }
    int tree = (int)syscall(428 /* open_tree */, AT_FDCWD, source, 1 /* OPEN_TREE_CLONE */ | O_CLOEXEC | 0x8000 /* AT_RECURSIVE */);
    if (tree < 0) { rc = -errno; close(ns); return rc; }
    struct { unsigned long long attr_set, attr_clr, propagation, userns_fd; } attr = { 0x100000 /* MOUNT_ATTR_IDMAP */, 0, 0, (unsigned long long)ns };
    if (syscall(442 /* mount_setattr */, tree, "", 0x1000 /* AT_EMPTY_PATH */, &attr, sizeof attr) != 0) rc = -errno;
    else if (syscall(429 /* move_mount */, tree, "", AT_FDCWD, target, 4 /* MOVE_MOUNT_F_EMPTY_PATH */) != 0) rc = -errno;
    close(tree);
    close(ns);
    return rc;
}

int kr_loop_detach(int number) {
    char path[32];
    snprintf(path, sizeof path, "/dev/loop%d", number);
    int dev = open(path, O_RDWR | O_CLOEXEC);
    if (dev < 0) return -errno;
    int rc = ioctl(dev, LOOP_CLR_FD, 0);
    int e = errno;
    close(dev);
    return rc == 0 || e == ENXIO ? 0 : -e;
}
int kr_mount_beneath(const char *source, const char *target) {
    int tree = (int)syscall(428 /* open_tree */, AT_FDCWD, source, 1 /* OPEN_TREE_CLONE */ | O_CLOEXEC);
    if (tree < 0) return -errno;
    int rc = (int)syscall(429 /* move_mount */, tree, "", AT_FDCWD, target,
                          4 /* MOVE_MOUNT_F_EMPTY_PATH */ | 0x200 /* MOVE_MOUNT_BENEATH */);
    int saved = errno;
    close(tree);
    return rc == 0 ? 0 : -saved;
}
long long kr_fs_type(const char *path) {
    struct statfs fs;
    if (statfs(path, &fs) != 0) return -errno;
    return (long long)fs.f_type;
}

int kr_memfd_create(const char *name, unsigned int flags) {
    return (int)syscall(SYS_memfd_create, name, flags);
}

pid_t kr_peek_exited(void) {
    siginfo_t info;
    memset(&info, 0, sizeof(info));
    if (waitid(P_ALL, 0, &info, WEXITED | WNOWAIT) < 0) return errno == ECHILD ? 0 : -errno;
    return info.si_pid;
}

int kr_try_reap(pid_t pid, int *status) {
    pid_t r = waitpid(pid, status, WNOHANG);
    if (r < 0) return -errno;
    return r == pid ? 1 : 0;
}

// recvmsg into buf with room for ancillary data in control (EINTR retried):
// the byte count or -errno; the control messages are then in *msg.
static ssize_t recv_with_control(int sock, void *buf, size_t len, struct msghdr *msg, struct iovec *iov,
                                 void *control, size_t control_len) {
    iov->iov_base = buf;
    iov->iov_len = len;
    memset(msg, 0, sizeof(*msg));
    msg->msg_iov = iov;
    msg->msg_iovlen = 1;
    msg->msg_control = control;
    msg->msg_controllen = control_len;
    ssize_t n;
    do { n = recvmsg(sock, msg, MSG_CMSG_CLOEXEC); } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : n;
}

ssize_t kr_recv_with_pid(int sock, void *buf, size_t len, pid_t *pid) {
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(struct ucred))]; } u;
    struct msghdr msg;
    struct iovec iov;
    *pid = 0;
    ssize_t n = recv_with_control(sock, buf, len, &msg, &iov, u.buf, sizeof(u.buf));
    if (n < 0) return n;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
            struct ucred cred;
            memcpy(&cred, CMSG_DATA(c), sizeof(cred));
            *pid = cred.pid;
        }
    }
    return n;
}

int kr_set_child_subreaper(void) { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) < 0 ? -errno : 0; }

int kr_wifexited(int s) { return WIFEXITED(s); }
int kr_wexitstatus(int s) { return WEXITSTATUS(s); }
int kr_wifsignaled(int s) { return WIFSIGNALED(s); }
int kr_wtermsig(int s) { return WTERMSIG(s); }

int kr_send_message(int sock, const void *buf, size_t len, int fd) {
    struct iovec iov = {.iov_base = (void *)buf, .iov_len = len};
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr msg = {0};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    if (fd >= 0) {
        memset(&u, 0, sizeof(u));
        msg.msg_control = u.buf;
        msg.msg_controllen = sizeof(u.buf);
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof(int));
    }
    ssize_t n;
    do { n = sendmsg(sock, &msg, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    return n < 0 ? -errno : (int)n;
}

int kr_recv_message(int sock, void *buf, size_t len, int *fd) {
    union { struct cmsghdr h; char buf[CMSG_SPACE(sizeof(int))]; } u;
    struct msghdr msg;
    struct iovec iov;
    *fd = -1;
    ssize_t n = recv_with_control(sock, buf, len, &msg, &iov, u.buf, sizeof(u.buf));
    if (n < 0) return (int)n;
    struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
    if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) memcpy(fd, CMSG_DATA(c), sizeof(int));
    return (int)n;
}

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

int kr_pidfd_open(pid_t pid) {
    long fd = syscall(SYS_pidfd_open, pid, 0);
    return fd < 0 ? -errno : (int)fd;
}

int kr_pidfd_getfd(int pidfd, int fd) {
    long copy = syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    return copy < 0 ? -errno : (int)copy;
}

int kr_send_fd(int sock, int fd) {
    char byte = 0;
    int n = kr_send_message(sock, &byte, 1, fd);
    return n < 0 ? n : 0;
}

int kr_recv_fd(int sock) {
    char byte;
    int fd;
    int n = kr_recv_message(sock, &byte, 1, &fd);
    if (n < 0) return n;
    return fd < 0 ? -EBADMSG : fd;
}

// ---------------------------------------------------------------- child helpers

static int g_sync = -1;

// The child of a raw clone(2) of a multi-threaded parent inherits glibc's
// internal locks in whatever state the parent's other threads held them:
// glibc's setgroups/setres[ug]id broadcast the change to every thread of
// the process and take the thread-list lock for that (a thread being
// created or exiting in the parent at clone time holds it: the child then
// hangs), and strerror may translate through locale locks. The child is
// one thread: raw syscalls do, and messages are untranslated.
static int raw_setgroups(size_t n, const gid_t *gids) { return (int)syscall(SYS_setgroups, n, gids); }
static int raw_setresgid(gid_t g) { return (int)syscall(SYS_setresgid, g, g, g); }
static int raw_setresuid(uid_t u) { return (int)syscall(SYS_setresuid, u, u, u); }
static const char *error_text(int e) {
    const char *d = strerrordesc_np(e);
    return d ? d : "unknown error";
}

static void write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) { if (errno == EINTR) continue; return; }
        buf += n; len -= (size_t)n;
    }
}

// Reports an error to the parent and exits. Never returns.
__attribute__((noreturn, format(printf, 1, 2)))
static void die(const char *fmt, ...) {
    int saved = errno;
    char buf[1024];
    buf[0] = 'E';
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + 1, sizeof(buf) - 1, fmt, ap);
    va_end(ap);
    if (n < 0) n = 0;
    size_t len = 1 + (size_t)n;
    if (len >= sizeof(buf)) len = sizeof(buf) - 1;
    if (saved != 0 && len < sizeof(buf) - 40) {
        len += (size_t)snprintf(buf + len, sizeof(buf) - len, ": %s", error_text(saved));
        if (len >= sizeof(buf)) len = sizeof(buf) - 1;
    }
    if (g_sync >= 0) {
        send(g_sync, buf, len, MSG_NOSIGNAL);
    } else {
        write_all(2, buf + 1, len - 1);
        write_all(2, "\n", 1);
    }
    _exit(1);
}

static void send_byte(char c) {
    ssize_t n;
    do { n = send(g_sync, &c, 1, MSG_NOSIGNAL); } while (n < 0 && errno == EINTR);
    if (n < 0) _exit(1);
}

static void expect_byte(char want) {
    char c;
    ssize_t n;
    do { n = recv(g_sync, &c, 1, 0); } while (n < 0 && errno == EINTR);
    if (n != 1 || c != want) _exit(1);  // parent died or aborted
}

// mkdir -p for an absolute path; components must not be symlinks that escape
// (the path was already joined under the rootfs by the caller).
static int mkdir_p(const char *path, mode_t mode) {
    char buf[4096];
    size_t len = strlen(path);
    if (len >= sizeof(buf)) { errno = ENAMETOOLONG; return -1; }
    memcpy(buf, path, len + 1);
    for (size_t i = 1; i <= len; i++) {
        if (buf[i] == '/' || buf[i] == 0) {
            char saved = buf[i];
            buf[i] = 0;
            if (mkdir(buf, mode) < 0 && errno != EEXIST) return -1;
            buf[i] = saved;
        }
    }
    return 0;
}

static void join_path(char *out, size_t size, const char *root, const char *path) {
    while (*path == '/') path++;
    size_t rl = strlen(root);
    while (rl > 1 && root[rl - 1] == '/') rl--;
    snprintf(out, size, "%.*s/%s", (int)rl, root, path);
}

// Creates the mount point `target`: a directory, or an empty file when
// `as_file` is set (bind mount of a file).
static void make_mountpoint(const char *target, int as_file) {
    struct stat st;
    if (stat(target, &st) == 0) return;
    if (!as_file) {
        if (mkdir_p(target, 0755) < 0) die("mkdir %s", target);
        return;
    }
    char parent[4096];
    snprintf(parent, sizeof(parent), "%s", target);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        if (mkdir_p(parent, 0755) < 0) die("mkdir %s", parent);
    }
    int fd = open(target, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0) die("create mount point %s", target);
    close(fd);
}

// Mounts the container's own cgroup of one hierarchy at `target`: a fresh
// cgroup mount (`fstype`, `data`), whose root inside a cgroup namespace is
// the container's cgroup and otherwise the hierarchy's root, of which only the
// container's directory is kept (a detached clone moved over the mount point,
// so no view of the whole hierarchy stays below it). Where this process may
// not mount cgroupfs (a user namespace without its own cgroup namespace), the
// container's directory is cloned from the host's mount `host_root`.
// Returns 0, or -1 with errno set.
static int mount_own_cgroup(const char *target, const char *fstype, const char *data,
                            const struct kr_mount *m, const char *host_root) {
    unsigned long flags = m->flags & ~MS_RDONLY;
    const char *sub = m->cgroup_path && strcmp(m->cgroup_path, "/") != 0 ? m->cgroup_path : NULL;
    int tree = -1;
    char path[4096];
    if (mount(fstype, target, fstype, flags, data) == 0) {
        if (m->cgroup_ns || !sub) return 0;
        snprintf(path, sizeof(path), "%s%s", target, sub);
        tree = (int)syscall(428 /* open_tree */, AT_FDCWD, path, 1 /* OPEN_TREE_CLONE */ | O_CLOEXEC);
        int saved = errno;
        umount2(target, MNT_DETACH);
        if (tree < 0) { errno = saved; return -1; }
    } else {
        if (errno != EPERM || !host_root || !host_root[0]) return -1;
        snprintf(path, sizeof(path), "%s%s", host_root, m->cgroup_path ? m->cgroup_path : "");
        tree = (int)syscall(428 /* open_tree */, AT_FDCWD, path, 1 /* OPEN_TREE_CLONE */ | O_CLOEXEC);
        if (tree < 0) return -1;
    }
    int rc = (int)syscall(429 /* move_mount */, tree, "", AT_FDCWD, target, 4 /* MOVE_MOUNT_F_EMPTY_PATH */);
    int saved = errno;
    close(tree);
    errno = saved;
    return rc < 0 ? -1 : 0;
}

// Detached clones of the bind sources (open_tree), made by a staged init's
// first stage with the caller's privileges, before the user namespace: a
// mapped root may not walk to them (containerd's state is 0700).
#define KR_MAX_BIND_CLONES 256
static int g_bind_clones[KR_MAX_BIND_CLONES];  // by mount index; -1: none
static const struct kr_mount *g_bind_base = NULL;
static int g_n_bind_clones = 0;

static void clone_bind_sources(const struct kr_init_config *c) {
    g_bind_base = c->mounts;
    for (int i = 0; i < c->n_mounts && i < KR_MAX_BIND_CLONES; i++) {
        g_bind_clones[i] = -1;
        g_n_bind_clones = i + 1;
        const struct kr_mount *m = &c->mounts[i];
        if (m->kind != KR_MOUNT_BIND) continue;
        int flags = 1 /* OPEN_TREE_CLONE */ | O_CLOEXEC | ((m->flags & MS_REC) ? 0x8000 /* AT_RECURSIVE */ : 0);
        g_bind_clones[i] = (int)syscall(428 /* open_tree */, AT_FDCWD, m->source, flags);
        if (g_bind_clones[i] < 0) die("mount %s: source %s", m->destination, m->source);
    }
}

static void do_mount(const struct kr_mount *m, const char *rootfs) {
    char target[4096];
    join_path(target, sizeof(target), rootfs, m->destination);
    long index = g_bind_base ? m - g_bind_base : -1;
    int clone_fd = index >= 0 && index < g_n_bind_clones ? g_bind_clones[index] : -1;
    if (m->kind == KR_MOUNT_BIND && clone_fd >= 0) {
        struct stat st;
        if (fstat(clone_fd, &st) < 0) die("mount %s: source %s", m->destination, m->source);
        make_mountpoint(target, !S_ISDIR(st.st_mode));
        if (syscall(429 /* move_mount */, clone_fd, "", AT_FDCWD, target, 4 /* MOVE_MOUNT_F_EMPTY_PATH */) < 0)
            die("bind mount %s on %s", m->source, m->destination);
        close(clone_fd);
        g_bind_clones[index] = -1;
        unsigned long extra = m->flags & ~(MS_BIND | MS_REC);
        if (extra && mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | extra, NULL) < 0)
            die("remount %s", m->destination);
    } else if (m->kind == KR_MOUNT_BIND) {
        int as_file = 0;
        struct stat st;
        if (stat(m->source, &st) < 0) die("mount %s: source %s", m->destination, m->source);
        as_file = !S_ISDIR(st.st_mode);
        make_mountpoint(target, as_file);
        unsigned long rec = m->flags & MS_REC;
        if (mount(m->source, target, NULL, MS_BIND | rec, NULL) < 0)
            die("bind mount %s on %s", m->source, m->destination);
        unsigned long extra = m->flags & ~(MS_BIND | MS_REC);
        if (extra) {
            if (mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | extra, NULL) < 0)
                die("remount %s", m->destination);
        }
    } else if (m->kind == KR_MOUNT_CGROUP_V1) {
        // One tmpfs, then the container's own cgroup of every hierarchy
        // below it, made read-only as asked.
        make_mountpoint(target, 0);
        if (mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=755") < 0)
            die("mount tmpfs on %s", m->destination);
        // The hierarchies are reached relative to the new tmpfs: an absolute
        // path would cross the container's sysfs ("sys/fs/cgroup") three
        // times per hierarchy, and kernfs revalidates those dentries under
        // the sysfs lock that concurrent network namespace creation holds.
        int cwd = open(".", O_PATH | O_DIRECTORY | O_CLOEXEC);
        if (cwd < 0) die("open current directory");
        if (chdir(target) < 0) die("chdir %s", m->destination);
        for (const char *h = m->source; h && *h;) {
            const char *host = h + strlen(h) + 1;
            const char *next = host + strlen(host) + 1;
            const char *name = strncmp(h, "name=", 5) == 0 ? h + 5 : h;
            if (mkdir(name, 0755) < 0 && errno != EEXIST) die("mkdir %s/%s", m->destination, name);
            if (mount_own_cgroup(name, "cgroup", h, m, host) < 0)
                die("mount cgroup %s on %s/%s", h, m->destination, name);
            if (m->flags & MS_RDONLY)
                mount(NULL, name, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | (m->flags & ~MS_RDONLY), NULL);
            h = next;
        }
        if (fchdir(cwd) < 0) die("restore current directory");
        close(cwd);
    } else if (m->kind == KR_MOUNT_CGROUP_V2) {
        make_mountpoint(target, 0);
        if (mount_own_cgroup(target, "cgroup2", NULL, m, m->source) < 0)
            die("mount cgroup2 on %s", m->destination);
        if (m->flags & MS_RDONLY)
            mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | (m->flags & ~MS_RDONLY), NULL);
    } else {
        make_mountpoint(target, 0);
        if (mount(m->source, target, m->type, m->flags, m->data) < 0) {
            // sysfs cannot be mounted without a private netns; bind instead (as runc).
            if (errno == EPERM && m->type && strcmp(m->type, "sysfs") == 0) {
                if (mount("/sys", target, NULL, MS_BIND | MS_REC, NULL) < 0)
                    die("bind /sys on %s", m->destination);
                if (mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | (m->flags & ~MS_REC), NULL) < 0 && errno != EPERM)
                    die("remount %s", m->destination);
            } else {
                die("mount %s (%s) on %s", m->source ? m->source : "none",
                    m->type ? m->type : "", m->destination);
            }
        }
    }
    if (m->propagation) {
        if (mount(NULL, target, NULL, m->propagation, NULL) < 0)
            die("set propagation of %s", m->destination);
    }
}

static void create_device(const struct kr_device *d, const char *rootfs, int bind) {
    char target[4096];
    join_path(target, sizeof(target), rootfs, d->path);
    struct stat pst;
    char parent[4096];
    snprintf(parent, sizeof(parent), "%s", target);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        if (stat(parent, &pst) < 0) mkdir_p(parent, 0755);
    }
    if (bind) {
        char host[4096];
        snprintf(host, sizeof(host), "%s", d->path);
        int fd = open(target, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
        if (fd >= 0) close(fd);
        if (mount(host, target, NULL, MS_BIND, NULL) < 0) die("bind device %s", d->path);
        // As crun: a bound node is no place to run or gain privileges from.
        mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | MS_NOSUID | MS_NOEXEC, NULL);
        return;
    }
    unlink(target);
    mode_t type = d->type == 'b' ? S_IFBLK : d->type == 'p' ? S_IFIFO : S_IFCHR;
    if (mknod(target, type | (d->mode & 07777), makedev(d->major, d->minor)) < 0)
        die("mknod %s", d->path);
    if (chmod(target, d->mode & 07777) < 0) die("chmod %s", d->path);
    if (chown(target, d->uid, d->gid) < 0) die("chown %s", d->path);
}

static void dev_symlinks(const char *rootfs) {
    static const char *links[][2] = {
        {"/proc/self/fd", "dev/fd"}, {"/proc/self/fd/0", "dev/stdin"},
        {"/proc/self/fd/1", "dev/stdout"}, {"/proc/self/fd/2", "dev/stderr"},
        {"/proc/kcore", "dev/core"},
    };
    char path[4096];
    for (size_t i = 0; i < sizeof(links) / sizeof(links[0]); i++) {
        join_path(path, sizeof(path), rootfs, links[i][1]);
        if (symlink(links[i][0], path) < 0 && errno != EEXIST) die("symlink %s", path);
    }
    join_path(path, sizeof(path), rootfs, "dev/ptmx");
    struct stat st;
    if (lstat(path, &st) == 0 && !S_ISLNK(st.st_mode)) unlink(path);
    if (symlink("pts/ptmx", path) < 0 && errno != EEXIST) die("symlink %s", path);
}

// Detached clones of the host's /dev/null (open_tree), made before
// pivot_root: masked files get the host node bound over them, read-only, as
// crun does. Falls back to the container's /dev/null.
// Only masked paths that are files get a clone (most default ones are
// directories or absent): each open_tree takes the global mount lock for
// writing, and an unused clone is torn down again at execve.
#define KR_MAX_MASK_CLONES 64
static int g_null_clones[KR_MAX_MASK_CLONES];  // by masked path index; -1: none
static int g_n_null_clones = 0;

static void prepare_mask_sources(const struct kr_init_config *c) {
    for (int i = 0; i < c->n_masked && i < KR_MAX_MASK_CLONES; i++) {
        g_null_clones[i] = -1;
        g_n_null_clones = i + 1;
        char path[4096];
        join_path(path, sizeof(path), c->rootfs, c->masked_paths[i]);
        struct stat st;
        if (stat(path, &st) < 0 || S_ISDIR(st.st_mode)) continue;
        g_null_clones[i] = (int)syscall(428 /* open_tree */, AT_FDCWD, "/dev/null", 1 /* OPEN_TREE_CLONE */ | O_CLOEXEC);
    }
}

static void mask_path(const char *path, int index) {
    struct stat st;
    if (stat(path, &st) < 0) {
        if (errno == ENOENT) return;
        die("stat masked path %s", path);
    }
    if (S_ISDIR(st.st_mode)) {
        if (mount("tmpfs", path, "tmpfs", MS_RDONLY, "size=0k") < 0) die("mask %s", path);
        return;
    }
    int done = 0;
    if (index < g_n_null_clones && g_null_clones[index] >= 0) {
        done = syscall(429 /* move_mount */, g_null_clones[index], "", AT_FDCWD, path, 4 /* MOVE_MOUNT_F_EMPTY_PATH */) == 0;
        close(g_null_clones[index]);
        g_null_clones[index] = -1;
    }
    if (!done && mount("/dev/null", path, NULL, MS_BIND, NULL) < 0) die("mask %s", path);
    mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL);
}

static void readonly_path(const char *path) {
    if (mount(path, path, NULL, MS_BIND | MS_REC, NULL) < 0) {
        if (errno == ENOENT) return;
        die("bind readonly path %s", path);
    }
    if (mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC, NULL) < 0) {
        // Keep the flags the mount already has when nosuid etc. are locked.
        if (mount(NULL, path, NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_REC | MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) < 0)
            die("remount readonly path %s", path);
    }
}

static void write_file(const char *path, const char *value) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) die("open %s", path);
    size_t len = strlen(value);
    ssize_t n = write(fd, value, len);
    if (n < 0 || (size_t)n != len) die("write %s", path);
    close(fd);
}

static void set_sysctl(const char *key, const char *value) {
    char path[4096] = "/proc/sys/";
    size_t off = strlen(path);
    for (const char *k = key; *k && off < sizeof(path) - 1; k++) path[off++] = *k == '.' ? '/' : *k;
    path[off] = 0;
    write_file(path, value);
}

static pid_t run_hook_in_child(const struct kr_hook *hook, const char *state) {
    int rc = kr_run_hook(hook, state);
    if (rc == -ETIMEDOUT) { errno = 0; die("hook %s timed out", hook->path); }
    if (rc < 0) { errno = -rc; die("hook %s", hook->path); }
    if (!WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
        errno = 0;
        die("hook %s failed with status %d", hook->path, WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc));
    }
    return 0;
}

static void setup_rootfs(const struct kr_init_config *c) {
    const char *rootfs = c->rootfs;
    // Nothing we do may propagate back to the host.
    if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) < 0) die("make / rslave");
    if (mount(rootfs, rootfs, NULL, MS_BIND | MS_REC, NULL) < 0) die("bind rootfs %s", rootfs);
    for (int i = 0; i < c->n_mounts; i++) do_mount(&c->mounts[i], rootfs);
    for (int i = 0; i < c->n_devices; i++) create_device(&c->devices[i], rootfs, c->bind_devices);
    char devdir[4096];
    join_path(devdir, sizeof(devdir), rootfs, "dev");
    struct stat st;
    if (stat(devdir, &st) == 0) dev_symlinks(rootfs);
}

static void enter_rootfs(const struct kr_init_config *c) {
    const char *rootfs = c->rootfs;
    if (c->n_masked > 0) prepare_mask_sources(c);
    if (chdir(rootfs) < 0) die("chdir %s", rootfs);
    if (c->no_pivot) {
        if (mount(rootfs, "/", NULL, MS_MOVE, NULL) < 0) die("move rootfs");
        if (chroot(".") < 0) die("chroot");
    } else {
        // pivot_root(".", ".") stacks the old root under the new one; then
        // unmount it lazily. No temporary directory is needed.
        int oldroot = open("/", O_DIRECTORY | O_RDONLY | O_CLOEXEC);
        if (oldroot < 0) die("open /");
        if (kr_pivot_root(".", ".") < 0) die("pivot_root %s", rootfs);
        if (fchdir(oldroot) < 0) die("fchdir old root");
        if (mount(NULL, ".", NULL, MS_SLAVE | MS_REC, NULL) < 0) die("make old root rslave");
        if (umount2(".", MNT_DETACH) < 0) die("unmount old root");
        close(oldroot);
    }
    if (chdir("/") < 0) die("chdir /");
}

static void finish_rootfs(const struct kr_init_config *c) {
    // sysctl before /proc/sys becomes read-only, as runc.
    for (int i = 0; i < c->n_sysctl; i++) set_sysctl(c->sysctl_keys[i], c->sysctl_values[i]);
    for (int i = 0; i < c->n_masked; i++) mask_path(c->masked_paths[i], i);
    for (int i = 0; i < c->n_readonly; i++) readonly_path(c->readonly_paths[i]);
    if (c->readonly_rootfs) {
        if (mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY, NULL) < 0) {
            // Keep locked flags (nosuid, nodev) of the underlying mount.
            if (mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) < 0)
                die("remount rootfs read-only");
        }
    }
    unsigned long prop = c->rootfs_propagation ? c->rootfs_propagation : 0;
    if (prop && mount(NULL, "/", NULL, prop, NULL) < 0) die("set rootfs propagation");
}

static void setup_terminal(const struct kr_init_config *c) {
    int master = open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (master < 0) die("open /dev/ptmx");
    if (unlockpt(master) < 0) die("unlockpt");
    char name[128];
    if (ptsname_r(master, name, sizeof(name)) != 0) die("ptsname");
    int slave = open(name, O_RDWR | O_NOCTTY);
    if (slave < 0) die("open %s", name);
    // /dev/console is the terminal, as runc does.
    struct stat st;
    if (c->mode != KR_MODE_EXEC && stat("/dev/console", &st) < 0 && errno == ENOENT) {
        int fd = open("/dev/console", O_CREAT | O_WRONLY | O_CLOEXEC, 0600);
        if (fd >= 0) close(fd);
    }
    if (c->mode != KR_MODE_EXEC) mount(name, "/dev/console", NULL, MS_BIND, NULL);
    int rc = kr_send_fd(c->console_fd, master);
    if (rc < 0) { errno = -rc; die("send pty master to console socket"); }
    close(master);
    close(c->console_fd);
    if (setsid() < 0 && errno != EPERM) die("setsid");
    if (ioctl(slave, TIOCSCTTY, 0) < 0) die("TIOCSCTTY");
    for (int fd = 0; fd < 3; fd++)
        if (dup2(slave, fd) < 0) die("dup2 pty");
    if (slave > 2) close(slave);
}

static void set_credentials(const struct kr_init_config *c, int seccomp_early) {
    if (c->has_caps) {
        if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) < 0) die("PR_SET_KEEPCAPS");
        for (int cap = 0; cap <= 63; cap++) {
            if (c->cap_bounding & (1ULL << cap)) continue;
            if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) {
                if (errno == EINVAL) break;  // past the last capability
                die("drop bounding capability %d", cap);
            }
        }
    }
    if (c->n_gids >= 0) {
        if (raw_setgroups((size_t)c->n_gids, c->additional_gids) < 0 && errno != EPERM)
            die("setgroups");
    }
    if (seccomp_early && c->seccomp_len > 0) {
        struct sock_fprog prog = {.len = (unsigned short)c->seccomp_len, .filter = (struct sock_filter *)c->seccomp_filter};
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) die("load seccomp filter");
    }
    if (raw_setresgid(c->gid) < 0) die("setgid %u", c->gid);
    if (raw_setresuid(c->uid) < 0) die("setuid %u", c->uid);
    if (c->has_caps) {
        struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
        struct __user_cap_data_struct data[2];
        memset(data, 0, sizeof(data));
        data[0].effective = (uint32_t)c->cap_effective;
        data[1].effective = (uint32_t)(c->cap_effective >> 32);
        data[0].permitted = (uint32_t)c->cap_permitted;
        data[1].permitted = (uint32_t)(c->cap_permitted >> 32);
        data[0].inheritable = (uint32_t)c->cap_inheritable;
        data[1].inheritable = (uint32_t)(c->cap_inheritable >> 32);
        if (syscall(SYS_capset, &hdr, data) < 0) die("capset");
        for (int cap = 0; cap <= 63; cap++) {
            if (!(c->cap_ambient & (1ULL << cap))) continue;
            if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0) < 0 && errno != EINVAL && errno != EPERM)
                die("raise ambient capability %d", cap);
        }
    }
}

// Resolves argv[0] against PATH from the container environment.
static const char *resolve_exec(const struct kr_init_config *c, char *buf, size_t size) {
    const char *file = c->argv[0];
    if (strchr(file, '/')) {
        if (access(file, X_OK) < 0) die("exec %s", file);
        return file;
    }
    const char *path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (char *const *e = c->envp; e && *e; e++)
        if (strncmp(*e, "PATH=", 5) == 0) { path = *e + 5; break; }
    const char *p = path;
    while (1) {
        const char *end = strchrnul(p, ':');
        size_t dl = (size_t)(end - p);
        if (dl == 0) snprintf(buf, size, "%s", file);
        else snprintf(buf, size, "%.*s/%s", (int)dl, p, file);
        struct stat st;
        if (stat(buf, &st) == 0 && S_ISREG(st.st_mode) && access(buf, X_OK) == 0) return buf;
        if (!*end) break;
        p = end + 1;
    }
    errno = ENOENT;
    die("exec: \"%s\": executable file not found in $PATH", file);
}

// Called before a created init waits for `start`. Everything above the
// preserved range is closed but the sync socket and the exec fifo, which
// are close-on-exec'd: a daemon that clones inits from many threads has, at
// that moment, other containers' sockets, pipes, loop devices and FUSE
// connections open, and a copy held here until start would keep a peer
// from seeing end of file, or a device from being released.
static void close_extra_fds(const struct kr_init_config *c) {
    int first = 3 + (c->preserve_fds > 0 ? c->preserve_fds : 0);
    int keep[2] = {c->sync_fd, c->fifo_fd};
    if (keep[0] > keep[1]) { int t = keep[0]; keep[0] = keep[1]; keep[1] = t; }
    int from = first;
    for (int i = 0; i < 2; i++) {
        if (keep[i] < from) continue;
        if (keep[i] > from) syscall(SYS_close_range, (unsigned)from, (unsigned)(keep[i] - 1), 0);
        from = keep[i] + 1;
    }
    syscall(SYS_close_range, (unsigned)from, ~0U, 0);
    if (syscall(SYS_close_range, (unsigned)first, ~0U, 4 /* CLOSE_RANGE_CLOEXEC */) < 0) {
        for (int fd = first; fd < 1024; fd++) fcntl(fd, F_SETFD, FD_CLOEXEC);
    }
    for (int fd = 3; fd < first; fd++) {
        int fl = fcntl(fd, F_GETFD);
        if (fl >= 0) fcntl(fd, F_SETFD, fl & ~FD_CLOEXEC);
    }
}

// Asks AppArmor to confine the process in `profile` from its next execve
// (the runtime refused the config when AppArmor is not enabled).
static void set_apparmor_profile(const char *profile) {
    char buf[4096];
    int n = snprintf(buf, sizeof(buf), "exec %s", profile);
    if (n < 0 || (size_t)n >= sizeof(buf)) { errno = ENAMETOOLONG; die("apparmor profile %s", profile); }
    int fd = open("/proc/self/attr/apparmor/exec", O_WRONLY | O_CLOEXEC);
    if (fd < 0) fd = open("/proc/self/attr/exec", O_WRONLY | O_CLOEXEC);
    if (fd < 0) die("open /proc/self/attr/apparmor/exec");
    if (write(fd, buf, (size_t)n) != n) die("set apparmor profile %s", profile);
    close(fd);
}

// Joins the namespaces given by path. Those the caller's user namespace
// owns (a CNI network namespace) are joined with the caller's privileges,
// before the user namespace; those only the joined user namespace gives
// rights to (a rootless caller's), after it. `before_user` runs between.
static void join_namespaces(const struct kr_init_config *c, void (*before_user)(const struct kr_init_config *)) {
    int later[16], n_later = 0, user_fd = -1;
    for (int i = 0; i < c->n_joins; i++)
        if (c->joins[i].type == CLONE_NEWUSER) user_fd = c->joins[i].fd;
    for (int i = 0; i < c->n_joins; i++) {
        if (c->joins[i].type == CLONE_NEWUSER) continue;
        if (setns(c->joins[i].fd, c->joins[i].type) == 0) { close(c->joins[i].fd); continue; }
        if (errno != EPERM || user_fd < 0 || n_later == 16) die("join namespace type 0x%x", c->joins[i].type);
        later[n_later++] = i;
    }
    if (before_user) before_user(c);
    if (user_fd >= 0 && setns(user_fd, CLONE_NEWUSER) < 0) die("join user namespace");
    for (int k = 0; k < n_later; k++) {
        const struct kr_ns_join *j = &c->joins[later[k]];
        if (setns(j->fd, j->type) < 0) die("join namespace type 0x%x", j->type);
        close(j->fd);
    }
}

__attribute__((noreturn))
static void child_main(const struct kr_init_config *c) {
    g_sync = c->sync_fd;
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    // The container starts with default signal dispositions and an empty
    // mask, whatever the caller of the runtime had.
    for (int sig = 1; sig < _NSIG; sig++) {
        if (sig == SIGKILL || sig == SIGSTOP) continue;
        signal(sig, SIG_DFL);
    }
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    // Explicit stdio (a shim's fifos) replaces what the caller had.
    for (int i = 0; i < 3; i++) {
        if (c->stdio_fds[i] < 0 || c->stdio_fds[i] == i) continue;
        if (dup2(c->stdio_fds[i], i) < 0) die("dup2 stdio %d", i);
    }
    if (c->staged) {
        // Bind sources cloned with the caller's privileges, before a user
        // namespace takes them away; then a new one is made, or a joined
        // one entered.
        join_namespaces(c, clone_bind_sources);
        if (c->clone_flags & CLONE_NEWUSER) {
            if (unshare(CLONE_NEWUSER) < 0) die("unshare user namespace");
            send_byte('U');
        }
    }
    // 'G' may carry the container state JSON (with our pid) for hooks.
    static char go[65536];
    ssize_t gn;
    do { gn = recv(g_sync, go, sizeof(go) - 1, 0); } while (gn < 0 && errno == EINTR);
    if (gn < 1 || go[0] != 'G') _exit(1);
    go[gn] = 0;
    const char *state_json = gn > 1 ? go + 1 : c->state_json;

    if (c->staged) {
        if (raw_setresgid(0) < 0) die("setgid 0 in user namespace");
        if (raw_setresuid(0) < 0) die("setuid 0 in user namespace");
        // Made in the user namespace, so that it owns them.
        int rest = c->clone_flags & ~CLONE_NEWUSER;
        if (rest && unshare(rest) < 0) die("unshare namespaces 0x%x", rest);
        // The init: pid 1 of a new pid namespace, the caller's child. Once
        // this process has exited (EOF), it reports itself ('P': the
        // caller learns its pid, in its own pid namespace, from the
        // message's credentials).
        int order[2];
        if (pipe2(order, O_CLOEXEC) < 0) die("pipe");
        long pid = syscall(SYS_clone, (unsigned long)CLONE_PARENT, NULL, NULL, NULL, NULL);
        if (pid < 0) die("clone container init");
        if (pid > 0) _exit(0);
        close(order[1]);
        char b;
        while (read(order[0], &b, 1) < 0 && errno == EINTR) {}
        close(order[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
        // The caller's directory (a shim's bundle, below containerd's 0700
        // state) may be out of the mapped root's reach.
        if (chdir("/") < 0) die("chdir /");
        send_byte('P');
    } else {
        join_namespaces(c, NULL);
    }
    if ((c->clone_flags & CLONE_NEWUSER) || c->bind_devices) {
        if (raw_setresgid(0) < 0) die("setgid 0 in user namespace");
        if (raw_setresuid(0) < 0) die("setuid 0 in user namespace");
    }
    if (c->unshare_cgroupns && unshare(CLONE_NEWCGROUP) < 0) die("unshare cgroup namespace");
    if (c->mode != KR_MODE_EXEC && setsid() < 0) die("setsid");

    if (c->hostname && sethostname(c->hostname, strlen(c->hostname)) < 0) die("sethostname");
    if (c->domainname && setdomainname(c->domainname, strlen(c->domainname)) < 0) die("setdomainname");

    if (c->mode != KR_MODE_EXEC && c->rootfs) {
        if (c->has_mount_ns) setup_rootfs(c);
        else for (int i = 0; i < c->n_mounts; i++) do_mount(&c->mounts[i], c->rootfs);  // in the caller's namespace
        if (c->needs_runtime_hooks) { send_byte('H'); expect_byte('h'); }
        for (int i = 0; i < c->n_create_container_hooks; i++)
            run_hook_in_child(&c->create_container_hooks[i], state_json);
        if (c->has_mount_ns) enter_rootfs(c);
        else if (chroot(c->rootfs) < 0 || chdir("/") < 0) die("chroot %s", c->rootfs);
        if (c->has_mount_ns) finish_rootfs(c);
        else for (int i = 0; i < c->n_sysctl; i++) set_sysctl(c->sysctl_keys[i], c->sysctl_values[i]);
    }
    if (c->terminal && c->console_fd >= 0) setup_terminal(c);

    if (c->has_oom_score_adj) {
        char v[32];
        snprintf(v, sizeof(v), "%d", c->oom_score_adj);
        int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) { if (write(fd, v, strlen(v)) < 0) { /* best effort, as runc */ } close(fd); }
    }
    for (int i = 0; i < c->n_rlimits; i++) {
        struct rlimit rl = {.rlim_cur = c->rlimits[i].soft, .rlim_max = c->rlimits[i].hard};
        if (setrlimit(c->rlimits[i].resource, &rl) < 0) die("setrlimit %d", c->rlimits[i].resource);
    }
    if (c->cwd && c->cwd[0]) {
        if (chdir(c->cwd) < 0) {
            if (c->mode != KR_MODE_EXEC && errno == ENOENT && mkdir_p(c->cwd, 0755) == 0 && chdir(c->cwd) == 0) {
            } else die("chdir to cwd (\"%s\") set in config.json failed", c->cwd);
        }
    }
    if (c->umask >= 0) umask((mode_t)c->umask);
    char pathbuf[4096];
    // Resolve before dropping privileges, as root still sees everything.
    const char *exe = resolve_exec(c, pathbuf, sizeof(pathbuf));

    int reopen_fd = c->fifo_fd;
    if (c->no_new_privs && prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die("PR_SET_NO_NEW_PRIVS");
    set_credentials(c, !c->no_new_privs);
    close_extra_fds(c);

    int fifo = -1;
    char fifo_path[64];
    if (c->mode == KR_MODE_CREATE) {
        // Reopen the exec fifo as the container's user, without blocking,
        // while errors still reach `create`: ENXIO (no reader yet) means the
        // blocking open below will work.
        snprintf(fifo_path, sizeof(fifo_path), "/proc/self/fd/%d", reopen_fd);
        do { fifo = open(fifo_path, O_WRONLY | O_NONBLOCK | O_CLOEXEC); } while (fifo < 0 && errno == EINTR);
        if (fifo < 0 && errno == ENOENT) die("open exec fifo through %s (create needs /proc mounted in the container)", fifo_path);
        if (fifo < 0 && errno != ENXIO) die("open exec fifo through %s", fifo_path);
    }

    // Ready. From here on a dying parent is no reason to die: `create` exits.
    prctl(PR_SET_PDEATHSIG, 0, 0, 0, 0);
    if (c->mode == KR_MODE_CREATE) {
        send_byte('R');
        int fd = fifo;
        if (fd >= 0) {
            int fl = fcntl(fd, F_GETFL);
            if (fl >= 0) fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
        } else {
            do { fd = open(fifo_path, O_WRONLY | O_CLOEXEC); } while (fd < 0 && errno == EINTR);
        }
        if (fd < 0) { g_sync = -1; die("open exec fifo"); }
        write_all(fd, "0", 1);
        close(fd);
        close(reopen_fd);
        close(c->sync_fd);
        g_sync = -1;
    } else {
        send_byte('R');
        expect_byte('S');
    }
    for (int i = 0; i < c->n_start_container_hooks; i++)
        run_hook_in_child(&c->start_container_hooks[i], state_json);
    if (c->no_new_privs && c->seccomp_len > 0) {
        struct sock_fprog prog = {.len = (unsigned short)c->seccomp_len, .filter = (struct sock_filter *)c->seccomp_filter};
        if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) < 0) die("load seccomp filter");
    }
    if (c->apparmor_profile) set_apparmor_profile(c->apparmor_profile);
    execve(exe, c->argv, c->envp);
    die("exec %s", exe);
}

pid_t kr_spawn_init(const struct kr_init_config *cfg) {
    unsigned long flags = cfg->staged ? 0 : (unsigned long)cfg->clone_flags;
    long pid = syscall(SYS_clone, flags | SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid < 0) return -errno;
    if (pid == 0) child_main(cfg);
    return (pid_t)pid;
}

// ---------------------------------------------------------------- hooks

int kr_run_hook(const struct kr_hook *hook, const char *stdin_data) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) return -errno;
    // A raw clone, not fork(): glibc's fork takes its malloc and stdio locks
    // (fork handlers), which a container init cloned from a multi-threaded
    // daemon may have inherited held. The child only dup2s and execs.
    pid_t pid = (pid_t)syscall(SYS_clone, (unsigned long)SIGCHLD, NULL, NULL, NULL, NULL);
    if (pid < 0) { int e = errno; close(p[0]); close(p[1]); return -e; }
    if (pid == 0) {
        dup2(p[0], 0);
        char *const empty[] = {NULL};
        char *const argv0[] = {(char *)hook->path, NULL};
        execve(hook->path, hook->argv && hook->argv[0] ? hook->argv : argv0, hook->envp ? hook->envp : empty);
        _exit(127);
    }
    close(p[0]);
    if (stdin_data) {
        signal(SIGPIPE, SIG_IGN);
        write_all(p[1], stdin_data, strlen(stdin_data));
    }
    close(p[1]);
    int status = 0;
    if (hook->timeout <= 0) {
        while (waitpid(pid, &status, 0) < 0) if (errno != EINTR) return -errno;
        return status;
    }
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (1) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid) return status;
        if (r < 0 && errno != EINTR) return -errno;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec >= hook->timeout) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -ETIMEDOUT;
        }
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

// ---------------------------------------------------------------- waiting

int kr_wait_forwarding(pid_t pid) {
    sigset_t all, old;
    sigfillset(&all);
    sigprocmask(SIG_BLOCK, &all, &old);
    int status = 0;
    while (1) {
        // Reap first: the child may already have exited.
        pid_t r;
        while ((r = waitpid(-1, &status, WNOHANG)) > 0) {
            if (r == pid) { sigprocmask(SIG_SETMASK, &old, NULL); return status; }
        }
        if (r < 0 && errno == ECHILD) { sigprocmask(SIG_SETMASK, &old, NULL); return -ECHILD; }
        siginfo_t si;
        int sig = sigwaitinfo(&all, &si);
        if (sig < 0) continue;
        if (sig == SIGCHLD || sig == SIGWINCH || sig == SIGURG) continue;
        kill(pid, sig);
    }
}

int kr_is_mount_root(const char *path) {
    struct statx st;
    if (statx(AT_FDCWD, path, AT_SYMLINK_NOFOLLOW, STATX_BASIC_STATS, &st) != 0) return -1;
    if (!(st.stx_attributes_mask & STATX_ATTR_MOUNT_ROOT)) {
        errno = ENOTSUP;
        return -1;
    }
    return (st.stx_attributes & STATX_ATTR_MOUNT_ROOT) ? 1 : 0;
}
