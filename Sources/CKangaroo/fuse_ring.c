// FUSE over io_uring (include/uapi/linux/fuse.h, protocol 7.42; Linux
// 6.14+): one registered ring entry per thread over raw io_uring syscalls.
// See ckangaroo_fuse_ring.h for the contract.
#define _GNU_SOURCE
#include "ckangaroo_fuse_ring.h"

#include <errno.h>
#include <linux/fuse.h>
#include <linux/io_uring.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

// The FUSE ring ABI (newer than the system's <linux/fuse.h>).
enum { RING_IN_OUT_HEADER_SZ = 128, RING_OP_IN_OUT_SZ = 128 };
enum { RING_CMD_REGISTER = 1, RING_CMD_COMMIT_AND_FETCH = 2 };

struct ring_ent_in_out {
    uint64_t flags;
    uint64_t commit_id;
    uint32_t payload_sz;
    uint32_t padding;
    uint64_t reserved;
};

struct ring_req_header {
    char in_out[RING_IN_OUT_HEADER_SZ];
    char op_in[RING_OP_IN_OUT_SZ];
    struct ring_ent_in_out ring_ent_in_out;
};

struct ring_cmd_req {
    uint64_t flags;
    uint64_t commit_id;
    uint16_t qid;
    uint8_t padding[6];
};

_Static_assert(sizeof(struct ring_req_header) == 288, "fuse_uring_req_header layout");
_Static_assert(sizeof(struct ring_cmd_req) == 24, "fuse_uring_cmd_req layout");
_Static_assert(sizeof(struct fuse_in_header) == 40, "fuse_in_header layout");
_Static_assert(sizeof(struct fuse_out_header) == 16, "fuse_out_header layout");

enum { SQE_SIZE = 128, RING_ENTRIES = 4 };

// Linux 6.15+: waiting for completions does not count as iowait. A worker
// waits for requests all the time; counted as iowait, every idle mount
// would show as I/O pressure (PSI) and 100 % iowait on its CPUs.
#define CKG_IORING_ENTER_NO_IOWAIT (1U << 7)
#define CKG_IORING_FEAT_NO_IOWAIT (1U << 17)

struct ckg_fuse_ring {
    int ring_fd;
    unsigned wait_flags;  // io_uring_enter flags when waiting
    int fuse_fd;
    unsigned qid;
    size_t payload_size;

    void *sq_map;
    size_t sq_map_len;
    void *cq_map;
    size_t cq_map_len;
    unsigned char *sqes;
    size_t sqes_len;
    unsigned *sq_head, *sq_tail, *sq_array, sq_mask;
    unsigned *cq_head, *cq_tail, cq_mask;
    struct io_uring_cqe *cqes;

    struct ring_req_header *header;  // iov[0]
    unsigned char *reply;            // 16-byte out header slot, then the payload (iov[1])
    unsigned char *reply_map;        // the mapping `reply` lies in
    size_t reply_len;
    unsigned char *request;          // the linear copy handed out
    size_t request_len;
    struct iovec iov[2];

    uint64_t commit_id;
    int ready_cqe;  // a completion was reaped already (open saw the first request)
    int ready_res;
};

static long sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags) {
    long r = syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, NULL, 0);
    return r < 0 ? -errno : r;
}

static void *map_anonymous(size_t length) {
    void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void ring_free(struct ckg_fuse_ring *r) {
    if (r->ring_fd >= 0) close(r->ring_fd);
    if (r->sqes) munmap(r->sqes, r->sqes_len);
    if (r->cq_map && r->cq_map != r->sq_map) munmap(r->cq_map, r->cq_map_len);
    if (r->sq_map) munmap(r->sq_map, r->sq_map_len);
    if (r->header) munmap(r->header, 4096);
    if (r->reply_map) munmap(r->reply_map, r->reply_len);
    if (r->request) munmap(r->request, r->request_len);
    free(r);
}

static int ring_setup(struct ckg_fuse_ring *r) {
    struct io_uring_params p;
    const unsigned attempts[] = {
        IORING_SETUP_SQE128 | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
        IORING_SETUP_SQE128 | IORING_SETUP_COOP_TASKRUN,
        IORING_SETUP_SQE128,
    };
    int fd = -EINVAL;
    for (size_t i = 0; i < sizeof(attempts) / sizeof(attempts[0]); i++) {
        memset(&p, 0, sizeof(p));
        p.flags = attempts[i];
        fd = (int)syscall(__NR_io_uring_setup, RING_ENTRIES, &p);
        if (fd >= 0) break;
        fd = -errno;
        if (fd != -EINVAL) return fd;
    }
    if (fd < 0) return fd;
    r->ring_fd = fd;
    r->wait_flags = IORING_ENTER_GETEVENTS;
    if (p.features & CKG_IORING_FEAT_NO_IOWAIT) r->wait_flags |= CKG_IORING_ENTER_NO_IOWAIT;

    r->sq_map_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_map_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    int single = (p.features & IORING_FEAT_SINGLE_MMAP) != 0;
    if (single) {
        if (r->cq_map_len > r->sq_map_len) r->sq_map_len = r->cq_map_len;
        r->cq_map_len = r->sq_map_len;
    }
    r->sq_map = mmap(NULL, r->sq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
    if (r->sq_map == MAP_FAILED) { r->sq_map = NULL; return -errno; }
    if (single) {
        r->cq_map = r->sq_map;
    } else {
        r->cq_map = mmap(NULL, r->cq_map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_CQ_RING);
        if (r->cq_map == MAP_FAILED) { r->cq_map = NULL; return -errno; }
    }
    r->sqes_len = p.sq_entries * SQE_SIZE;
    void *sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQES);
    if (sqes == MAP_FAILED) return -errno;
    r->sqes = sqes;

    unsigned char *sq = r->sq_map, *cq = r->cq_map;
    r->sq_head = (unsigned *)(sq + p.sq_off.head);
    r->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    r->sq_mask = *(unsigned *)(sq + p.sq_off.ring_mask);
    r->sq_array = (unsigned *)(sq + p.sq_off.array);
    r->cq_head = (unsigned *)(cq + p.cq_off.head);
    r->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    r->cq_mask = *(unsigned *)(cq + p.cq_off.ring_mask);
    r->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    return 0;
}

/// Queues one FUSE ring command (not yet submitted).
static void queue_cmd(struct ckg_fuse_ring *r, unsigned op, uint64_t commit_id) {
    unsigned tail = *r->sq_tail;
    unsigned index = tail & r->sq_mask;
    struct io_uring_sqe *sqe = (struct io_uring_sqe *)(r->sqes + (size_t)index * SQE_SIZE);
    memset(sqe, 0, SQE_SIZE);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = r->fuse_fd;
    sqe->cmd_op = op;
    if (op == RING_CMD_REGISTER) {
        sqe->addr = (uint64_t)(uintptr_t)r->iov;
        sqe->len = 2;
    }
    struct ring_cmd_req *cmd = (struct ring_cmd_req *)sqe->cmd;
    cmd->qid = (uint16_t)r->qid;
    cmd->commit_id = commit_id;
    r->sq_array[index] = index;
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
}

/// Takes one completion if there is one: 1 and *res, or 0.
static int take_cqe(struct ckg_fuse_ring *r, int *res) {
    unsigned head = *r->cq_head;
    if (head == __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE)) return 0;
    *res = r->cqes[head & r->cq_mask].res;
    __atomic_store_n(r->cq_head, head + 1, __ATOMIC_RELEASE);
    return 1;
}

/// Submits what is queued and waits for one completion.
static int submit_and_wait(struct ckg_fuse_ring *r, unsigned to_submit, int *res) {
    while (1) {
        if (to_submit == 0 && take_cqe(r, res)) return 0;
        long n = sys_enter(r->ring_fd, to_submit, 1, r->wait_flags);
        if (n >= 0) {
            to_submit = 0;
        } else if (n != -EINTR && n != -EAGAIN && n != -EBUSY) {
            return (int)n;
        } else if (*r->sq_head == *r->sq_tail) {
            to_submit = 0;  // Submitted before the wait was interrupted.
        }
    }
}

int ckg_fuse_ring_open(int fuse_fd, unsigned qid, size_t payload_size, struct ckg_fuse_ring **out) {
    struct ckg_fuse_ring *r = calloc(1, sizeof(*r));
    if (!r) return -ENOMEM;
    r->ring_fd = -1;
    r->fuse_fd = fuse_fd;
    r->qid = qid;
    r->payload_size = payload_size;
    int err = ring_setup(r);
    if (err < 0) { ring_free(r); return err; }

    // Pages are touched only as far as requests and replies reach.
    r->header = map_anonymous(4096);
    // The payload starts on a page boundary, the out header in the 16 bytes
    // before it: a copy into a buffer that is not 64-byte aligned runs up to
    // 7x slower here (rep movsb), and READ data is copied in and out of it.
    r->reply_len = 4096 + payload_size;
    r->reply_map = map_anonymous(r->reply_len);
    r->reply = r->reply_map ? r->reply_map + 4096 - sizeof(struct fuse_out_header) : NULL;
    r->request_len = sizeof(struct fuse_in_header) + RING_OP_IN_OUT_SZ + payload_size;
    r->request = map_anonymous(r->request_len);
    if (!r->header || !r->reply || !r->request) { ring_free(r); return -ENOMEM; }
    r->iov[0].iov_base = r->header;
    r->iov[0].iov_len = sizeof(struct ring_req_header);
    r->iov[1].iov_base = r->reply + sizeof(struct fuse_out_header);
    r->iov[1].iov_len = payload_size;

    // Register and collect an immediate failure; success completes only
    // when the first request arrives.
    queue_cmd(r, RING_CMD_REGISTER, 0);
    long n;
    do {
        n = sys_enter(r->ring_fd, 1, 0, r->wait_flags);
    } while (n == -EINTR && *r->sq_head != *r->sq_tail);
    if (n < 0 && n != -EINTR) { ring_free(r); return (int)n; }
    int res;
    if (take_cqe(r, &res)) {
        if (res < 0) { ring_free(r); return res; }
        r->ready_cqe = 1;
        r->ready_res = res;
    }
    *out = r;
    return 0;
}

/// Writes an error reply for the request in hand (committed by the caller).
static void reply_error(struct ckg_fuse_ring *r, const struct fuse_in_header *in, int error) {
    struct fuse_out_header oh = { .len = sizeof(oh), .error = -error, .unique = in->unique };
    memcpy(r->reply, &oh, sizeof(oh));
}

long ckg_fuse_ring_next(struct ckg_fuse_ring *r, size_t reply_length) {
    while (1) {
        int res;
        if (reply_length >= sizeof(struct fuse_out_header)) {
            memcpy(r->header->in_out, r->reply, sizeof(struct fuse_out_header));
            r->header->ring_ent_in_out.payload_sz = (uint32_t)(reply_length - sizeof(struct fuse_out_header));
            queue_cmd(r, RING_CMD_COMMIT_AND_FETCH, r->commit_id);
            int err = submit_and_wait(r, 1, &res);
            if (err < 0) return err;
        } else if (r->ready_cqe) {
            r->ready_cqe = 0;
            res = r->ready_res;
        } else {
            int err = submit_and_wait(r, 0, &res);
            if (err < 0) return err;
        }
        if (res < 0) return res;

        const struct fuse_in_header *in = (const struct fuse_in_header *)r->header->in_out;
        uint32_t payload = r->header->ring_ent_in_out.payload_sz;
        r->commit_id = r->header->ring_ent_in_out.commit_id;
        size_t fixed = sizeof(struct fuse_in_header) + payload;
        if (payload > r->payload_size || in->len < fixed || in->len - fixed > RING_OP_IN_OUT_SZ) {
            fprintf(stderr, "kangaroo: fuse ring: malformed request (opcode %u, len %u, payload %u)\n",
                    in->opcode, in->len, payload);
            reply_error(r, in, EIO);
            reply_length = sizeof(struct fuse_out_header);
            continue;
        }
        size_t op_header = in->len - fixed;
        memcpy(r->request, in, sizeof(*in));
        memcpy(r->request + sizeof(*in), r->header->op_in, op_header);
        memcpy(r->request + sizeof(*in) + op_header, r->reply + sizeof(struct fuse_out_header), payload);
        return (long)in->len;
    }
}

const void *ckg_fuse_ring_request(const struct ckg_fuse_ring *r) { return r->request; }

void *ckg_fuse_ring_reply_buffer(const struct ckg_fuse_ring *r) { return r->reply; }

void ckg_fuse_ring_close(struct ckg_fuse_ring *r) {
    if (r) ring_free(r);
}

int ckg_possible_cpus(void) {
    FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
    if (!f) return -1;
    char line[4096];
    int count = 0;
    if (fgets(line, sizeof(line), f)) {
        char *save = NULL;
        for (char *part = strtok_r(line, ",\n", &save); part; part = strtok_r(NULL, ",\n", &save)) {
            int lo, hi;
            int fields = sscanf(part, "%d-%d", &lo, &hi);
            if (fields == 1) count += 1;
            else if (fields == 2 && hi >= lo) count += hi - lo + 1;
        }
    }
    fclose(f);
    return count > 0 ? count : -1;
}

int ckg_pin_current_thread(int cpu) {
    if (cpu < 0 || cpu >= CPU_SETSIZE) return -EINVAL;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    int err = pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
    return -err;
}
