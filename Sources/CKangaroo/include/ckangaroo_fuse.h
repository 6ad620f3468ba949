#ifndef CKANGAROO_FUSE_H
#define CKANGAROO_FUSE_H

#include <stddef.h>
#include <stdint.h>

/// FUSE_DEV_IOC_CLONE: attach `fd` (a fresh open of /dev/fuse) to the
/// connection of `session_fd`. Returns 0 or -errno.
int ckg_fuse_dev_clone(int fd, uint32_t session_fd);

/// Sizes and offsets of the kernel's FUSE structs as the system header
/// <linux/fuse.h> declares them; unit tests compare the Swift encoders
/// against these. `name` is the struct name without `struct `, e.g.
/// "fuse_entry_out". Returns -1 for an unknown name.
long ckg_fuse_struct_size(const char *name);

/// offsetof for a few fields unit tests check (`struct.field`).
long ckg_fuse_field_offset(const char *name);

/// fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE) over [offset,
/// offset+length): gives a sparse cache file's blocks back. 0 or -1/errno.
int ckg_punch_hole(int fd, long long offset, long long length);

#endif
