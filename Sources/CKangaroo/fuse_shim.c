// FUSE-specific syscall helpers for KangarooFUSE (ioctls Glibc lacks) and
// the kernel header's struct layouts for the Swift encoders' unit tests.
#define _GNU_SOURCE
#include "ckangaroo_fuse.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fuse.h>
#include <string.h>
#include <sys/ioctl.h>

int ckg_fuse_dev_clone(int fd, uint32_t session_fd) {
    uint32_t session = session_fd;
    if (ioctl(fd, FUSE_DEV_IOC_CLONE, &session) == -1) {
        return -errno;
    }
    return 0;
}

#define SIZE_ENTRY(s) { #s, sizeof(struct s) }
static const struct { const char *name; long size; } sizes[] = {
    SIZE_ENTRY(fuse_in_header),
    SIZE_ENTRY(fuse_out_header),
    SIZE_ENTRY(fuse_attr),
    SIZE_ENTRY(fuse_kstatfs),
    SIZE_ENTRY(fuse_entry_out),
    SIZE_ENTRY(fuse_attr_out),
    SIZE_ENTRY(fuse_getattr_in),
    SIZE_ENTRY(fuse_forget_in),
    SIZE_ENTRY(fuse_forget_one),
    SIZE_ENTRY(fuse_batch_forget_in),
    SIZE_ENTRY(fuse_open_in),
    SIZE_ENTRY(fuse_open_out),
    SIZE_ENTRY(fuse_release_in),
    SIZE_ENTRY(fuse_flush_in),
    SIZE_ENTRY(fuse_read_in),
    SIZE_ENTRY(fuse_write_in),
    SIZE_ENTRY(fuse_statfs_out),
    SIZE_ENTRY(fuse_getxattr_in),
    SIZE_ENTRY(fuse_getxattr_out),
    SIZE_ENTRY(fuse_access_in),
    SIZE_ENTRY(fuse_init_in),
    SIZE_ENTRY(fuse_init_out),
    SIZE_ENTRY(fuse_interrupt_in),
    SIZE_ENTRY(fuse_dirent),
    SIZE_ENTRY(fuse_direntplus),
};

long ckg_fuse_struct_size(const char *name) {
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        if (strcmp(sizes[i].name, name) == 0) return sizes[i].size;
    }
    return -1;
}

#define OFFSET_ENTRY(s, f) { #s "." #f, offsetof(struct s, f) }
static const struct { const char *name; long offset; } offsets[] = {
    OFFSET_ENTRY(fuse_in_header, opcode),
    OFFSET_ENTRY(fuse_in_header, unique),
    OFFSET_ENTRY(fuse_in_header, nodeid),
    OFFSET_ENTRY(fuse_in_header, uid),
    OFFSET_ENTRY(fuse_in_header, pid),
    OFFSET_ENTRY(fuse_attr, mode),
    OFFSET_ENTRY(fuse_attr, nlink),
    OFFSET_ENTRY(fuse_attr, rdev),
    OFFSET_ENTRY(fuse_attr, blksize),
    OFFSET_ENTRY(fuse_entry_out, attr),
    OFFSET_ENTRY(fuse_attr_out, attr),
    OFFSET_ENTRY(fuse_init_out, max_background),
    OFFSET_ENTRY(fuse_init_out, max_write),
    OFFSET_ENTRY(fuse_init_out, max_pages),
    OFFSET_ENTRY(fuse_init_out, flags2),
    OFFSET_ENTRY(fuse_init_in, flags2),
    OFFSET_ENTRY(fuse_read_in, size),
    OFFSET_ENTRY(fuse_read_in, flags),
    OFFSET_ENTRY(fuse_kstatfs, bsize),
    OFFSET_ENTRY(fuse_kstatfs, frsize),
    OFFSET_ENTRY(fuse_dirent, name),
    OFFSET_ENTRY(fuse_direntplus, dirent),
};

long ckg_fuse_field_offset(const char *name) {
    for (size_t i = 0; i < sizeof(offsets) / sizeof(offsets[0]); i++) {
        if (strcmp(offsets[i].name, name) == 0) return offsets[i].offset;
    }
    return -1;
}

int ckg_punch_hole(int fd, long long offset, long long length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length);
}
