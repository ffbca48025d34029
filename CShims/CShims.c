// CShims.c — the non-inline part of the glue: ioctls, open flags, crc32c.
#define _GNU_SOURCE
#include "CShims.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/sysmacros.h>
#include <linux/fs.h>
#include <linux/falloc.h>
#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

const int CShims_O_DIRECT = O_DIRECT;
const int CShims_O_EXCL = O_EXCL;
const int CShims_O_CLOEXEC = O_CLOEXEC;

int CShims_block_device_size(int fd, uint64_t *sizeBytes) {
    return ioctl(fd, BLKGETSIZE64, sizeBytes) == 0 ? 0 : -errno;
}

int CShims_block_logical_sector_size(int fd, uint32_t *sizeBytes) {
    int value = 0;
    if (ioctl(fd, BLKSSZGET, &value) != 0) return -errno;
    *sizeBytes = (uint32_t)value;
    return 0;
}

int CShims_block_physical_sector_size(int fd, uint32_t *sizeBytes) {
    unsigned int value = 0;
    if (ioctl(fd, BLKPBSZGET, &value) != 0) return -errno;
    *sizeBytes = value;
    return 0;
}

int CShims_block_discard(int fd, uint64_t offset, uint64_t length) {
    uint64_t range[2] = {offset, length};
    return ioctl(fd, BLKDISCARD, range) == 0 ? 0 : -errno;
}

int CShims_file_punch_hole(int fd, uint64_t offset, uint64_t length) {
    return fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)offset, (off_t)length) == 0
               ? 0 : -errno;
}

int CShims_thread_prepare(const char *name, int nice) {
    char shortName[16];
    strncpy(shortName, name, sizeof shortName - 1);
    shortName[sizeof shortName - 1] = 0;
    (void)pthread_setname_np(pthread_self(), shortName);
    if (nice == 0) return 0;
    pid_t tid = (pid_t)syscall(SYS_gettid);
    return setpriority(PRIO_PROCESS, (id_t)tid, nice) == 0 ? 0 : errno;
}

int CShims_thread_pin(const int *cpus, int count) {
    cpu_set_t set;
    CPU_ZERO(&set);
    for (int i = 0; i < count; i++) {
        if (cpus[i] < 0 || cpus[i] >= CPU_SETSIZE) return EINVAL;
        CPU_SET(cpus[i], &set);
    }
    return pthread_setaffinity_np(pthread_self(), sizeof set, &set);
}

int CShims_thread_allowed_cpus(int *cpus, int capacity) {
    cpu_set_t set;
    CPU_ZERO(&set);
    int result = pthread_getaffinity_np(pthread_self(), sizeof set, &set);
    if (result != 0) return -result;
    int count = 0;
    for (int cpu = 0; cpu < CPU_SETSIZE && count < capacity; cpu++) {
        if (CPU_ISSET(cpu, &set)) cpus[count++] = cpu;
    }
    return count;
}

int CShims_cpu_set_size(void) { return CPU_SETSIZE; }

ssize_t CShims_pwritev2(int fd, const struct iovec *iov, int count, off_t offset, int flags) {
    return pwritev2(fd, iov, count, offset, flags);
}

uint32_t CShims_major(uint64_t rdev) { return major((dev_t)rdev); }
uint32_t CShims_minor(uint64_t rdev) { return minor((dev_t)rdev); }

// ---------------------------------------------------------------------------------------------
// crc32c. The portable path is the classic byte-at-a-time reflected table (slicing-by-8 for
// speed); the hardware path uses the SSE4.2 CRC32 instruction 8 bytes at a time. Both use the
// usual conventions: initial value ~0, final xor ~0, so `crc32c("123456789") == 0xE3069283`.
static uint32_t crc32c_table[8][256];
static pthread_once_t crc32c_once = PTHREAD_ONCE_INIT;
static int crc32c_has_sse42 = 0;
#if defined(__x86_64__)
static void crc32c_shift_init(void);
#endif

static void crc32c_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = n;
        for (int k = 0; k < 8; k++) crc = (crc & 1) ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
        crc32c_table[0][n] = crc;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t crc = crc32c_table[0][n];
        for (int k = 1; k < 8; k++) {
            crc = crc32c_table[0][crc & 0xff] ^ (crc >> 8);
            crc32c_table[k][n] = crc;
        }
    }
#if defined(__x86_64__)
    __builtin_cpu_init();
    crc32c_has_sse42 = __builtin_cpu_supports("sse4.2");
    if (crc32c_has_sse42) crc32c_shift_init();
#endif
}

uint32_t CShims_crc32c_portable(uint32_t crc, const void *data, size_t length) {
    pthread_once(&crc32c_once, crc32c_init);
    const uint8_t *p = (const uint8_t *)data;
    crc = ~crc;
    while (length && ((uintptr_t)p & 7)) {
        crc = crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
        length--;
    }
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        word ^= crc;
        crc = crc32c_table[7][word & 0xff] ^ crc32c_table[6][(word >> 8) & 0xff] ^
              crc32c_table[5][(word >> 16) & 0xff] ^ crc32c_table[4][(word >> 24) & 0xff] ^
              crc32c_table[3][(word >> 32) & 0xff] ^ crc32c_table[2][(word >> 40) & 0xff] ^
              crc32c_table[1][(word >> 48) & 0xff] ^ crc32c_table[0][word >> 56];
        p += 8;
        length -= 8;
    }
    while (length--) crc = crc32c_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

#if defined(__x86_64__)
// Three streams at once. The CRC32 instruction has a latency of 3 cycles and a throughput of
// one per cycle, so one dependent chain uses a third of it. A chunk of 3·N bytes is split into
// three parts whose crcs run interleaved (the first continuing the running value, the other two
// from 0); since the raw CRC register is linear in (register, data), the crc of the whole chunk is
// shift_N(shift_N(c0) ^ c1) ^ c2, where shift_N advances a register over N zero bytes. shift_N
// is linear in its 32-bit input: four 256-entry tables (one per input byte), built at init by
// running the instruction over N zero bytes from each single-byte input.
#define CRC32C_LONG 1024
#define CRC32C_SHORT 256
static uint32_t crc32c_shift_long[4][256];
static uint32_t crc32c_shift_short[4][256];

__attribute__((target("sse4.2")))
static uint32_t crc32c_zeros(uint32_t crc, size_t length) {
    uint64_t c = crc;
    for (size_t i = 0; i < length / 8; i++) c = __builtin_ia32_crc32di(c, 0);
    return (uint32_t)c;
}

__attribute__((target("sse4.2")))
static void crc32c_shift_init(void) {
    for (int k = 0; k < 4; k++) {
        for (uint32_t b = 0; b < 256; b++) {
            crc32c_shift_long[k][b] = crc32c_zeros(b << (8 * k), CRC32C_LONG);
            crc32c_shift_short[k][b] = crc32c_zeros(b << (8 * k), CRC32C_SHORT);
        }
    }
}

static inline uint32_t crc32c_shift(uint32_t table[4][256], uint32_t crc) {
    return table[0][crc & 0xff] ^ table[1][(crc >> 8) & 0xff] ^ table[2][(crc >> 16) & 0xff] ^ table[3][crc >> 24];
}

// One chunk of 3·n bytes (n a multiple of 8) as three interleaved streams, joined by `table`
// (shift over n zero bytes). Inlined with n constant at each call.
__attribute__((target("sse4.2"), always_inline))
static inline uint64_t crc32c_three_streams(uint64_t c, const uint8_t *p, size_t n, uint32_t table[4][256]) {
    uint64_t c1 = 0, c2 = 0;
    for (size_t i = 0; i < n; i += 8) {
        uint64_t w0, w1, w2;
        memcpy(&w0, p + i, 8);
        memcpy(&w1, p + n + i, 8);
        memcpy(&w2, p + 2 * n + i, 8);
        c = __builtin_ia32_crc32di(c, w0);
        c1 = __builtin_ia32_crc32di(c1, w1);
        c2 = __builtin_ia32_crc32di(c2, w2);
    }
    c = crc32c_shift(table, (uint32_t)c) ^ (uint32_t)c1;
    return crc32c_shift(table, (uint32_t)c) ^ (uint32_t)c2;
}

__attribute__((target("sse4.2")))
static uint32_t crc32c_sse42(uint32_t crc, const void *data, size_t length) {
    const uint8_t *p = (const uint8_t *)data;
    uint64_t c = ~crc;
    while (length && ((uintptr_t)p & 7)) {
        c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
        length--;
    }
    while (length >= 3 * CRC32C_LONG) {
        c = crc32c_three_streams(c, p, CRC32C_LONG, crc32c_shift_long);
        p += 3 * CRC32C_LONG;
        length -= 3 * CRC32C_LONG;
    }
    while (length >= 3 * CRC32C_SHORT) {
        c = crc32c_three_streams(c, p, CRC32C_SHORT, crc32c_shift_short);
        p += 3 * CRC32C_SHORT;
        length -= 3 * CRC32C_SHORT;
    }
    while (length >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = __builtin_ia32_crc32di(c, word);
        p += 8;
        length -= 8;
    }
    while (length--) c = __builtin_ia32_crc32qi((uint32_t)c, *p++);
    return ~(uint32_t)c;
}
#endif

uint32_t CShims_crc32c(uint32_t crc, const void *data, size_t length) {
    pthread_once(&crc32c_once, crc32c_init);
#if defined(__x86_64__)
    if (crc32c_has_sse42) return crc32c_sse42(crc, data, length);
#endif
    return CShims_crc32c_portable(crc, data, length);
}

int CShims_crc32c_hardware(void) {
    pthread_once(&crc32c_once, crc32c_init);
    return crc32c_has_sse42;
}
