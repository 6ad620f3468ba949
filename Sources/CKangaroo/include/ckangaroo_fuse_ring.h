#ifndef CKANGAROO_FUSE_RING_H
#define CKANGAROO_FUSE_RING_H

#include <stddef.h>
#include <stdint.h>

/// One FUSE-over-io_uring ring entry (Linux 6.14+, protocol 7.42) owned by
/// one thread: a private io_uring (SQE128, single issuer) holding one
/// registered entry of queue `qid` of a FUSE connection. The kernel puts a
/// request on the queue of the CPU that issued it and completes the
/// entry's command in the thread that registered it.
///
/// The shim hides the split layout of the ring buffers: a request is handed
/// out as the byte stream read(2) of /dev/fuse would give (in header, op
/// header, payload), and a reply is taken as a write(2) would take it
/// (out header, payload), with the payload already in place in the
/// entry's payload buffer.
struct ckg_fuse_ring;

/// Creates the io_uring and the entry's buffers (`payload_size` must be at
/// least the connection's max payload: max(max_write, max_pages * 4096))
/// and registers the entry with queue `qid`. Returns 0 and sets *out, or
/// -errno: -EOPNOTSUPP when the kernel has io_uring for FUSE disabled,
/// -EINVAL for a bad qid, other errors from io_uring_setup.
int ckg_fuse_ring_open(int fuse_fd, unsigned qid, size_t payload_size, struct ckg_fuse_ring **out);

/// Commits the reply of the request in hand (`reply_length` bytes at
/// ckg_fuse_ring_reply_buffer: the 16-byte out header, then the payload;
/// 0 when no request is in hand, i.e. right after open) and waits for the
/// next request. Returns the length of the request at
/// ckg_fuse_ring_request (> 0), or -errno: -ENOTCONN / -ECONNABORTED /
/// -ECANCELED when the connection or queue went away.
long ckg_fuse_ring_next(struct ckg_fuse_ring *ring, size_t reply_length);

/// The request in hand, laid out like a read(2) of /dev/fuse.
const void *ckg_fuse_ring_request(const struct ckg_fuse_ring *ring);

/// Where the reply goes: 16 bytes of out header, then up to payload_size
/// bytes of payload (which is the entry's payload buffer itself).
void *ckg_fuse_ring_reply_buffer(const struct ckg_fuse_ring *ring);

/// Closes the io_uring (the kernel releases the entry) and frees buffers.
void ckg_fuse_ring_close(struct ckg_fuse_ring *ring);

/// Number of possible CPUs as the kernel counts them (FUSE's queue count),
/// from /sys/devices/system/cpu/possible; -1 when unreadable.
int ckg_possible_cpus(void);

/// Pins the calling thread to `cpu`. 0 or -errno (EINVAL when the CPU is
/// not in the thread's allowed set).
int ckg_pin_current_thread(int cpu);

#endif
