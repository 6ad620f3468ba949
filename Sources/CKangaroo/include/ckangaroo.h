#ifndef CKANGAROO_H
#define CKANGAROO_H

#include <stdint.h>
#include <sys/types.h>

// Container init: everything between clone() and execve() of an OCI container
// process runs here, in C, so that only async-signal-safe code runs in the
// child. KangarooRuntime fills a kr_init_config from config.json and calls
// kr_spawn_init(); the child talks to the parent over `sync_fd` (a
// SOCK_SEQPACKET socketpair end) with one-byte messages:
//   child  -> parent 'U'  (staged) user namespace made: write its mappings
//   parent -> child  'G'  namespaces mapped and cgroups joined: set up
//   child  -> parent 'P'  (staged) the init, the caller's child, its pid
//                         in the message's credentials (SO_PASSCRED)
//   child  -> parent 'H'  mounts prepared: run prestart/createRuntime hooks
//   parent -> child  'h'  hooks done
//   child  -> parent 'R'  ready; (create) now waits on the exec fifo,
//                         (run/exec) waits for 'S'
//   parent -> child  'S'  start (run/exec modes)
//   child  -> parent 'E'<message>  setup failed; the child exits 1
// The socket is close-on-exec, so EOF after 'S' means execve succeeded.

enum kr_mode { KR_MODE_CREATE = 0, KR_MODE_RUN = 1, KR_MODE_EXEC = 2 };

// KR_MOUNT_CGROUP_V1: `source` is a NUL-separated, double-NUL-terminated
// list of pairs "controllers\0host mount point\0" (one per v1 hierarchy);
// KR_MOUNT_CGROUP_V2: `source` is the host's cgroup2 mount point. Both mount
// the container's own cgroup (`cgroup_path`) at the destination.
enum kr_mount_kind { KR_MOUNT_NORMAL = 0, KR_MOUNT_BIND = 1, KR_MOUNT_CGROUP_V1 = 2, KR_MOUNT_CGROUP_V2 = 3 };

struct kr_mount {
    const char *source;
    const char *destination;
    const char *type;
    const char *data;
    unsigned long flags;        // MS_* except propagation flags
    unsigned long propagation;  // MS_SHARED/MS_SLAVE/MS_PRIVATE/MS_UNBINDABLE (| MS_REC) or 0
    int kind;                   // kr_mount_kind
    int is_dir_hint;            // bind source is a directory (1) / file (0) / unknown (-1)
    const char *cgroup_path;    // cgroup kinds: the container's cgroup below each hierarchy root
    int cgroup_ns;              // cgroup kinds: the init is in its own cgroup namespace
};

struct kr_device {
    const char *path;
    int type;                   // 'c', 'b', 'p' (fifo)
    unsigned int major, minor;
    unsigned int mode;          // permission bits
    uid_t uid;
    gid_t gid;
};

struct kr_rlimit {
    int resource;
    uint64_t soft, hard;
};

struct kr_ns_join {
    int type;                   // CLONE_NEW*
    int fd;                     // opened by the parent
};

struct kr_hook {
    const char *path;
    char *const *argv;          // NULL-terminated; may be NULL
    char *const *envp;          // NULL-terminated; may be NULL
    int timeout;                // seconds, 0 = none
};

struct kr_init_config {
    int mode;
    int clone_flags;            // CLONE_NEW* to create at clone (never CLONE_NEWCGROUP)
    int unshare_cgroupns;       // create a cgroup namespace after joining the cgroup
    const struct kr_ns_join *joins;
    int n_joins;
    // Staged (a new user namespace, as runc): the first child joins the
    // namespaces given by path with the caller's privileges (a pod's CNI
    // network namespace belongs to the host's user namespace), clones the
    // bind sources (open_tree: a mapped root may not walk to them), unshares
    // the user namespace ('U'), and after 'G' the other new ones, then clones
    // the init as the caller's child (CLONE_PARENT) and exits; the init
    // reports itself ('P').
    // Also for a joined user namespace with new namespaces to make.
    int staged;

    int has_mount_ns;           // a mount namespace, new or joined: set the rootfs up in it
    const char *rootfs;         // absolute host path (create/run)
    int readonly_rootfs;
    int no_pivot;
    unsigned long rootfs_propagation;   // applied to / after pivot (0 = MS_SLAVE|MS_REC default)
    const struct kr_mount *mounts;
    int n_mounts;
    const char *const *masked_paths;
    int n_masked;
    const char *const *readonly_paths;
    int n_readonly;
    const struct kr_device *devices;
    int n_devices;
    int bind_devices;           // user namespace: bind host nodes instead of mknod
    const char *hostname;       // NULL = leave
    const char *domainname;
    const char *const *sysctl_keys;
    const char *const *sysctl_values;
    int n_sysctl;

    const struct kr_rlimit *rlimits;
    int n_rlimits;
    int has_caps;
    uint64_t cap_bounding, cap_effective, cap_inheritable, cap_permitted, cap_ambient;
    int no_new_privs;
    uid_t uid;
    gid_t gid;
    const gid_t *additional_gids;
    int n_gids;
    int umask;                  // -1 = leave
    int oom_score_adj;
    int has_oom_score_adj;
    char *const *argv;
    char *const *envp;
    const char *cwd;
    const char *apparmor_profile; // NULL = none; applied at execve
    const void *seccomp_filter; // struct sock_filter[]
    int seccomp_len;            // number of sock_filter entries, 0 = none

    int stdio_fds[3];           // descriptors for the process's 0, 1, 2; -1 = inherit
    int sync_fd;                // child's end of the socketpair
    int fifo_fd;                // O_PATH fd of exec.fifo (create mode), -1 otherwise
    int console_fd;             // connected console socket, -1 = none
    int terminal;               // allocate a pty
    int preserve_fds;           // keep fds 3 .. 3+n-1 open across exec

    const struct kr_hook *create_container_hooks;
    int n_create_container_hooks;
    const struct kr_hook *start_container_hooks;
    int n_start_container_hooks;
    const char *state_json;     // fed to hooks on stdin
    int needs_runtime_hooks;    // send 'H' and wait for 'h'
};

// Clones the container init. Returns its pid (in the caller's pid namespace)
// or -errno. The child never returns.
pid_t kr_spawn_init(const struct kr_init_config *cfg);

// Runs one hook to completion, feeding `stdin_data` on stdin. Returns the
// wait status, or -errno; -ETIMEDOUT if the timeout expired (hook killed).
int kr_run_hook(const struct kr_hook *hook, const char *stdin_data);

// Waits for `pid`, forwarding every catchable signal this process receives
// to it. Returns the wait status. Reaps other children too.
int kr_wait_forwarding(pid_t pid);

// Thin syscall wrappers Glibc lacks.
int kr_pivot_root(const char *new_root, const char *put_old);
int kr_setns(int fd, int nstype);
int kr_unshare(int flags);
// Loop devices: attaches [offset, offset + size) of the file `fd` to a free
// loop device (LOOP_CTL_GET_FREE + LOOP_CONFIGURE, retried when another
// process takes the device first); returns the device number or -errno.
int kr_loop_attach(int fd, unsigned long long offset, unsigned long long size);
// Detaches loop device `number` (LOOP_CLR_FD); 0 or -errno.
int kr_loop_detach(int number);
// An idmapped clone of the mount tree at `source` attached at `target`:
// ids 0..count-1 of the mount appear for host ids base..base+count-1 (a
// user namespace with that mapping is made for it by a short-lived child).
// 0 or -errno.
int kr_idmapped_mount(const char *source, const char *target, unsigned base, unsigned count);
// A clone of the mount at `source` put beneath the top mount at `target`
// (open_tree + move_mount MOVE_MOUNT_BENEATH, Linux 6.5): unmounting the top
// then reveals it, with no instant where `target` has neither. 0 or -errno.
int kr_mount_beneath(const char *source, const char *target);
// statfs(2)'s f_type of `path` (a filesystem magic), or -errno.
long long kr_fs_type(const char *path);
int kr_memfd_create(const char *name, unsigned int flags);
// pidfd_open(2) (close-on-exec) and pidfd_getfd(2): a descriptor for a
// process, and a copy of one of its descriptors (same open file); -errno.
int kr_pidfd_open(pid_t pid);
int kr_pidfd_getfd(int pidfd, int fd);

// Sends / receives one file descriptor over a unix socket (SCM_RIGHTS).
int kr_send_fd(int sock, int fd);
int kr_recv_fd(int sock);
// A message of up to `len` bytes with an optional descriptor (fd < 0: none)
// over a SOCK_SEQPACKET socket. Receive returns the length (0 at EOF) and
// sets *fd (-1 when none came, close-on-exec); -errno on failure.
int kr_send_message(int sock, const void *buf, size_t len, int fd);
int kr_recv_message(int sock, void *buf, size_t len, int *fd);
// One message and its sender's pid, in this process's pid namespace
// (SCM_CREDENTIALS; the socket needs SO_PASSCRED); 0 when absent.
ssize_t kr_recv_with_pid(int sock, void *buf, size_t len, pid_t *pid);

// Reaping: the pid of some exited child, left a zombie (waitid WNOWAIT,
// blocking); 0 with no children; -errno. And the status of `pid` if it has
// exited (reaped), 0 if it still runs, -errno.
pid_t kr_peek_exited(void);
int kr_try_reap(pid_t pid, int *status);
int kr_set_child_subreaper(void);

// Wait-status decoding (the macros are not importable into Swift).
int kr_wifexited(int status);
int kr_wexitstatus(int status);
int kr_wifsignaled(int status);
int kr_wtermsig(int status);

// Whether path is the root of a mount (statx STATX_ATTR_MOUNT_ROOT, not
// following a last symlink): 1, 0, or -1/errno (also when the kernel does
// not report the attribute).
int kr_is_mount_root(const char *path);

// FUSE ioctls and kernel struct layouts (KangarooFUSE).
#include "ckangaroo_fuse.h"
#include "ckangaroo_fuse_ring.h"

#endif
