#define _GNU_SOURCE
#include "AllocCounter.h"
#include <stddef.h>
#include <errno.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

static uint64_t total_count;
static __thread uint64_t thread_count;

static inline void count_one(void) {
    __atomic_fetch_add(&total_count, 1, __ATOMIC_RELAXED);
    thread_count++;
}

void *malloc(size_t size) { count_one(); return __libc_malloc(size); }
void *calloc(size_t n, size_t size) { count_one(); return __libc_calloc(n, size); }
void *realloc(void *p, size_t size) { count_one(); return __libc_realloc(p, size); }
int posix_memalign(void **out, size_t alignment, size_t size) {
    count_one();
    void *p = __libc_memalign(alignment, size);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}
void *aligned_alloc(size_t alignment, size_t size) { count_one(); return __libc_memalign(alignment, size); }
void *memalign(size_t alignment, size_t size) { count_one(); return __libc_memalign(alignment, size); }

uint64_t AllocCounter_total(void) { return __atomic_load_n(&total_count, __ATOMIC_RELAXED); }
uint64_t AllocCounter_thread(void) { return thread_count; }
