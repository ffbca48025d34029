// CShims — C glue for Strata, and nothing else.
//
// What lives here and why:
//  * liburing exposes some of its API as function-like macros and as flag constants built from
//    enums (`(1U << IOSQE_IO_LINK_BIT)`), which Swift cannot import. We re-export them as
//    `static inline` functions and plain constants.
//  * Kernel constants newer than Debian 12's 6.1 UAPI headers (RWF_ATOMIC, ...).
//  * libaio (io_setup/io_submit/io_getevents/io_destroy) and its iocb preparation helpers.
//  * Block-device ioctls (BLKGETSIZE64, BLKSSZGET, BLKPBSZGET, BLKDISCARD) and open flags
//    (O_DIRECT, O_EXCL) that Glibc's Swift overlay does not surface on every toolchain.
//  * crc32c (Castagnoli) with SSE4.2 when the CPU has it and a portable table fallback.
#ifndef CSHIMS_H
#define CSHIMS_H

#include <stdint.h>
#include <stddef.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <liburing.h>
#include <libaio.h>

// ---------------------------------------------------------------------------------------------
// io_uring: SQE flags (enum-built macros do not import) and constants missing from 6.1 headers.
static const uint8_t CShims_IOSQE_FIXED_FILE = (uint8_t)IOSQE_FIXED_FILE;
static const uint8_t CShims_IOSQE_IO_DRAIN = (uint8_t)IOSQE_IO_DRAIN;
static const uint8_t CShims_IOSQE_IO_LINK = (uint8_t)IOSQE_IO_LINK;
static const uint8_t CShims_IOSQE_IO_HARDLINK = (uint8_t)IOSQE_IO_HARDLINK;
static const uint8_t CShims_IOSQE_ASYNC = (uint8_t)IOSQE_ASYNC;
static const uint8_t CShims_IOSQE_CQE_SKIP_SUCCESS = (uint8_t)IOSQE_CQE_SKIP_SUCCESS;

#ifndef RWF_ATOMIC
#define RWF_ATOMIC 0x00000040 // Linux 6.11: untorn O_DIRECT write (not in the 6.1 UAPI headers)
#endif
#ifndef RWF_DONTCACHE
#define RWF_DONTCACHE 0x00000080 // Linux 6.14
#endif
static const int CShims_RWF_DSYNC = RWF_DSYNC;
static const int CShims_RWF_ATOMIC = RWF_ATOMIC;

/// Reaps up to `max` ready CQEs without blocking: copies (user_data, res) pairs out and
/// advances the CQ head once. This replaces the `io_uring_for_each_cqe` macro.
static inline unsigned CShims_io_uring_reap(struct io_uring *ring, uint64_t *userData,
                                           int32_t *results, unsigned max) {
    unsigned count = 0;
    unsigned head;
    struct io_uring_cqe *cqe;
    io_uring_for_each_cqe(ring, head, cqe) {
        if (count == max) break;
        userData[count] = cqe->user_data;
        results[count] = cqe->res;
        count++;
    }
    if (count) io_uring_cq_advance(ring, count);
    return count;
}

/// Prepares a read or write (fixed buffer when `bufferIndex >= 0`, fixed file always) with
/// `rw_flags` and user data in one call, so Swift touches the SQE's unions only here.
static inline void CShims_io_uring_prep_rw(struct io_uring_sqe *sqe, int isWrite,
                                           int file, int fixedFile, void *buffer, unsigned length,
                                           uint64_t offset, int bufferIndex, int rwFlags,
                                           uint64_t userData) {
    if (bufferIndex >= 0) {
        if (isWrite) io_uring_prep_write_fixed(sqe, file, buffer, length, offset, bufferIndex);
        else io_uring_prep_read_fixed(sqe, file, buffer, length, offset, bufferIndex);
    } else {
        if (isWrite) io_uring_prep_write(sqe, file, buffer, length, offset);
        else io_uring_prep_read(sqe, file, buffer, length, offset);
    }
    sqe->rw_flags = rwFlags; // after prep: io_uring_prep_rw zeroes it
    if (fixedFile) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, userData);
}

static inline void CShims_io_uring_prep_fdatasync(struct io_uring_sqe *sqe, int file, int fixedFile,
                                                  uint64_t userData) {
    io_uring_prep_fsync(sqe, file, IORING_FSYNC_DATASYNC);
    if (fixedFile) sqe->flags |= IOSQE_FIXED_FILE;
    io_uring_sqe_set_data64(sqe, userData);
}

// ---------------------------------------------------------------------------------------------
// libaio
static inline void CShims_aio_prep_rw(struct iocb *iocb, int isWrite, int fd, void *buffer,
                                      size_t length, long long offset, int rwFlags,
                                      uint64_t userData) {
    if (isWrite) io_prep_pwrite(iocb, fd, buffer, length, offset);
    else io_prep_pread(iocb, fd, buffer, length, offset);
    iocb->aio_rw_flags = rwFlags;
    iocb->data = (void *)(uintptr_t)userData;
}

static inline void CShims_aio_prep_fdatasync(struct iocb *iocb, int fd, uint64_t userData) {
    io_prep_fdsync(iocb, fd);
    iocb->data = (void *)(uintptr_t)userData;
}

static inline uint64_t CShims_aio_event_user_data(const struct io_event *event) {
    return (uint64_t)(uintptr_t)event->data;
}
/// The kernel reports the result in `res` (bytes or -errno) as an unsigned long.
static inline int64_t CShims_aio_event_result(const struct io_event *event) {
    return (int64_t)(long)event->res;
}

// ---------------------------------------------------------------------------------------------
// Files and block devices
extern const int CShims_O_DIRECT;
extern const int CShims_O_EXCL;
extern const int CShims_O_CLOEXEC;

/// Size in bytes of a block device (BLKGETSIZE64). Returns 0 on success, -errno on failure.
int CShims_block_device_size(int fd, uint64_t *sizeBytes);
/// Logical sector size (BLKSSZGET).
int CShims_block_logical_sector_size(int fd, uint32_t *sizeBytes);
/// Physical sector size (BLKPBSZGET).
int CShims_block_physical_sector_size(int fd, uint32_t *sizeBytes);
/// pwritev2 (glibc declares it only under _GNU_SOURCE, which Swift's Glibc module lacks).
ssize_t CShims_pwritev2(int fd, const struct iovec *iov, int count, off_t offset, int flags);
/// BLKDISCARD over [offset, offset+length).
int CShims_block_discard(int fd, uint64_t offset, uint64_t length);
/// fallocate(PUNCH_HOLE|KEEP_SIZE) for regular files.
int CShims_file_punch_hole(int fd, uint64_t offset, uint64_t length);
/// Names the calling thread (the first 15 bytes of `name`) and, when `nice` is not 0, sets its
/// nice value (setpriority on its thread id). Returns 0, or the errno of setpriority (EACCES or
/// EPERM without CAP_SYS_NICE for a negative value).
int CShims_thread_prepare(const char *name, int nice);
/// Restricts the calling thread to the `count` CPUs in `cpus` (each < CPU_SETSIZE). Returns 0 or
/// the errno of pthread_setaffinity_np (EINVAL: none of them is online and allowed).
int CShims_thread_pin(const int *cpus, int count);
/// The CPUs the calling thread may run on, ascending, into `cpus` (at most `capacity`);
/// returns how many, or -errno.
int CShims_thread_allowed_cpus(int *cpus, int capacity);
/// CPU_SETSIZE: CPU numbers are below it.
int CShims_cpu_set_size(void);
uint32_t CShims_major(uint64_t rdev);
uint32_t CShims_minor(uint64_t rdev);

// ---------------------------------------------------------------------------------------------
// crc32c (Castagnoli, reflected polynomial 0x82F63B78), the checksum of every Strata block.
/// Continues a crc32c: pass 0 to start. Uses SSE4.2 when the CPU has it.
uint32_t CShims_crc32c(uint32_t crc, const void *data, size_t length);
/// The portable table implementation (always available; tests compare the two).
uint32_t CShims_crc32c_portable(uint32_t crc, const void *data, size_t length);
/// 1 if the hardware path is in use.
int CShims_crc32c_hardware(void);

// Compile-time checks on the layouts the Swift side relies on.
_Static_assert(sizeof(struct io_uring_cqe) == 16, "io_uring_cqe layout");
_Static_assert(sizeof(struct io_uring_sqe) == 64, "io_uring_sqe layout");
_Static_assert(sizeof(struct iocb) == 64, "iocb layout");
_Static_assert(sizeof(struct io_event) == 32, "io_event layout");

#endif
