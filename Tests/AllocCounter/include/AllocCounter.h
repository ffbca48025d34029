// AllocCounter — a test-only malloc interposer. Linked into the test executable, its malloc,
// calloc, realloc, posix_memalign and aligned_alloc count each call and forward to glibc.
#ifndef ALLOC_COUNTER_H
#define ALLOC_COUNTER_H
#include <stdint.h>
/// Allocation calls made by any thread of this process so far.
uint64_t AllocCounter_total(void);
/// Allocation calls made by the calling thread so far.
uint64_t AllocCounter_thread(void);
#endif
