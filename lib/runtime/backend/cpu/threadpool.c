/* threadpool.c — persistent worker threads for the runtime's kernels.
 *
 * Decode issues ~50 small matvecs per token on small models, so the cost of
 * one mt_pool_run must be a few microseconds, not a futex wake-up (~5-50 µs)
 * each. Design:
 *   - the caller is thread 0; n_threads - 1 pthreads are started once;
 *   - a run publishes (fn, arg) and bumps an atomic generation counter;
 *     workers spin on that counter (with a pause) for MT_POOL_SPIN_NS after
 *     their last task, and only then sleep on a futex keyed on the counter;
 *   - completion is an atomic count of unfinished workers; the caller spins
 *     on it, then sleeps on a futex on the count, so long tasks (prefill)
 *     do not burn the caller's core;
 *   - every sleeper is announced in an atomic counter before it re-checks the
 *     word it waits on (Dekker-style with seq_cst atomics), so a waker only
 *     makes the futex syscall when someone may actually sleep.
 * Spinning yields the CPU now and then so that an oversubscribed pool
 * (more threads than cores) still makes progress.
 *
 * One thread owns a pool and calls mt_pool_run; a task must not call
 * mt_pool_run on its own pool (it would wait for itself). */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MT_CPU_PAUSE() _mm_pause()
#elif defined(__aarch64__)
#define MT_CPU_PAUSE() __asm__ __volatile__("yield")
#else
#define MT_CPU_PAUSE() ((void)0)
#endif

#include "kernels_impl.h"

/* How long a worker keeps spinning for the next task after finishing one,
 * and how long the caller spins for workers before sleeping. */
#define MT_POOL_SPIN_NS 100000  /* 100 µs */
#define MT_POOL_MAX_THREADS 512

struct mt_pool {
    int n_threads;                 /* including the caller                  */
    pthread_t *threads;            /* [n_threads - 1]                       */
    int n_started;                 /* threads actually created              */

    /* Published task; written by the caller before `gen` is bumped. */
    mt_task_fn fn;
    void *arg;

    _Alignas(64) atomic_uint gen;  /* task generation; futex word for workers */
    atomic_int n_sleep_workers;    /* workers in (or entering) futex wait   */
    atomic_int stop;               /* set once, at mt_pool_free             */
    _Alignas(64) atomic_uint pending; /* workers still running the task; futex word for the caller */
    atomic_int caller_sleeps;      /* caller in (or entering) futex wait    */
};

static long futex_wait(atomic_uint *addr, unsigned expected) {
    return syscall(SYS_futex, (unsigned *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}
static void futex_wake_all(atomic_uint *addr) {
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
}

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Spins until *word != old or MT_POOL_SPIN_NS pass; returns the last value
 * seen. Checks the clock every 64 pauses and yields every ~8 µs. */
static unsigned spin_while_equal(atomic_uint *word, unsigned old) {
    unsigned v = atomic_load_explicit(word, memory_order_acquire);
    if (v != old) return v;
    const uint64_t t0 = now_ns();
    uint64_t last_yield = t0;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            MT_CPU_PAUSE();
            v = atomic_load_explicit(word, memory_order_acquire);
            if (v != old) return v;
        }
        const uint64_t t = now_ns();
        if (t - t0 > MT_POOL_SPIN_NS) return v;
        if (t - last_yield > 8000) {
            sched_yield();
            last_yield = t;
        }
    }
}

typedef struct {
    mt_pool *pool;
    int ith;
} worker_arg;

static void *worker_loop(void *varg) {
    worker_arg wa = *(worker_arg *)varg;
    free(varg);
    mt_pool *p = wa.pool;
    unsigned seen = 0; /* generation of the last task run (pool starts at 0) */
    for (;;) {
        unsigned g = spin_while_equal(&p->gen, seen);
        while (g == seen) {
            atomic_fetch_add(&p->n_sleep_workers, 1);
            g = atomic_load(&p->gen);
            if (g == seen) futex_wait(&p->gen, seen);
            atomic_fetch_sub(&p->n_sleep_workers, 1);
            g = atomic_load(&p->gen);
        }
        seen = g;
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) break;
        p->fn(p->arg, wa.ith, p->n_threads);
        if (atomic_fetch_sub(&p->pending, 1) == 1 && atomic_load(&p->caller_sleeps))
            futex_wake_all(&p->pending);
    }
    return NULL;
}

int mt_pool_init(mt_pool **out, int n_threads) {
    *out = NULL;
    if (n_threads < 1 || n_threads > MT_POOL_MAX_THREADS)
        return mt_seterr(MT_ERR_ARG, "thread pool: %d threads requested (1..%d)", n_threads, MT_POOL_MAX_THREADS);
    mt_pool *p = calloc(1, sizeof *p);
    if (!p) return mt_seterr(MT_ERR_NOMEM, "thread pool: out of memory");
    p->n_threads = n_threads;
    atomic_init(&p->gen, 0);
    atomic_init(&p->n_sleep_workers, 0);
    atomic_init(&p->stop, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->caller_sleeps, 0);
    if (n_threads > 1) {
        p->threads = calloc((size_t)(n_threads - 1), sizeof *p->threads);
        if (!p->threads) {
            free(p);
            return mt_seterr(MT_ERR_NOMEM, "thread pool: out of memory");
        }
        for (int i = 1; i < n_threads; i++) {
            worker_arg *wa = malloc(sizeof *wa);
            if (!wa) {
                mt_pool_free(p);
                return mt_seterr(MT_ERR_NOMEM, "thread pool: out of memory");
            }
            wa->pool = p;
            wa->ith = i;
            int rc = pthread_create(&p->threads[i - 1], NULL, worker_loop, wa);
            if (rc != 0) {
                free(wa);
                mt_pool_free(p);
                return mt_seterr(MT_ERR_INTERNAL, "thread pool: pthread_create failed for thread %d: %s", i, strerror(rc));
            }
            p->n_started++;
        }
    }
    *out = p;
    return MT_OK;
}

void mt_pool_free(mt_pool *p) {
    if (!p) return;
    if (p->n_started > 0) {
        atomic_store(&p->stop, 1);
        atomic_fetch_add(&p->gen, 1);
        futex_wake_all(&p->gen);
        for (int i = 0; i < p->n_started; i++) pthread_join(p->threads[i], NULL);
    }
    free(p->threads);
    free(p);
}

int mt_pool_size(const mt_pool *p) { return p ? p->n_threads : 1; }

void mt_pool_run(mt_pool *p, mt_task_fn fn, void *arg) {
    if (!p || p->n_threads == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->pending, (unsigned)(p->n_threads - 1));
    atomic_fetch_add(&p->gen, 1); /* seq_cst: publishes fn/arg/pending */
    if (atomic_load(&p->n_sleep_workers) > 0) futex_wake_all(&p->gen);

    fn(arg, 0, p->n_threads);

    unsigned left = atomic_load_explicit(&p->pending, memory_order_acquire);
    while (left != 0) {
        left = spin_while_equal(&p->pending, left);
        if (left == 0) break;
        /* Still waiting after a full spin: sleep until the last worker wakes us. */
        atomic_store(&p->caller_sleeps, 1);
        left = atomic_load(&p->pending);
        while (left != 0) {
            futex_wait(&p->pending, left);
            left = atomic_load(&p->pending);
        }
        atomic_store(&p->caller_sleeps, 0);
    }
    /* acquire on the final load of `pending` orders the workers' writes before ours */
    atomic_thread_fence(memory_order_acquire);
}

void mt_split_range(int64_t n, int ith, int nth, int64_t align, int64_t *begin, int64_t *end) {
    if (n <= 0 || nth <= 0 || ith < 0 || ith >= nth) {
        *begin = *end = n > 0 ? n : 0;
        return;
    }
    if (align < 1) align = 1;
    const int64_t units = (n + align - 1) / align;   /* aligned chunks */
    const int64_t per = units / nth, extra = units % nth;
    const int64_t u0 = ith * per + (ith < extra ? ith : extra);
    const int64_t u1 = u0 + per + (ith < extra ? 1 : 0);
    int64_t b = u0 * align, e = u1 * align;
    if (b > n) b = n;
    if (e > n) e = n;
    *begin = b;
    *end = e;
}
