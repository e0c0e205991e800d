/* test_threadpool.c — the runtime's thread pool: every run calls fn exactly
 * once per thread with the right (ith, nth), the caller sees all workers'
 * writes when mt_pool_run returns (spinning, sleeping and long-task paths),
 * 100k back-to-back tiny runs, clean shutdown; and mt_split_range's
 * partition properties. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kernels_impl.h"

#define MAXT 8

typedef struct {
    atomic_int calls[MAXT];    /* runs seen per thread index            */
    int plain[MAXT];           /* non-atomic writes checked by the caller */
    atomic_int bad_nth;        /* calls with an unexpected nth          */
    int expect_nth;
    int round;
    int slow_us;               /* workers (ith > 0) sleep this long      */
} counter_task;

static void count_fn(void *arg, int ith, int nth) {
    counter_task *t = arg;
    if (nth != t->expect_nth || ith < 0 || ith >= nth) {
        atomic_fetch_add(&t->bad_nth, 1);
        return;
    }
    if (t->slow_us && ith > 0) usleep((useconds_t)t->slow_us);
    atomic_fetch_add(&t->calls[ith], 1);
    t->plain[ith] = t->round; /* ordinary store: visible to the caller after run */
}

static void check_runs(int nth, int runs, int sleep_us_between, int slow_us) {
    mt_pool *p = NULL;
    assert_int_equal(mt_pool_init(&p, nth), MT_OK);
    assert_non_null(p);
    assert_int_equal(mt_pool_size(p), nth);
    counter_task t;
    memset(&t, 0, sizeof t);
    t.expect_nth = nth;
    t.slow_us = slow_us;
    for (int r = 1; r <= runs; r++) {
        t.round = r;
        mt_pool_run(p, count_fn, &t);
        for (int i = 0; i < nth; i++) {
            if (t.plain[i] != r) fail_msg("nth=%d run %d: thread %d wrote %d", nth, r, i, t.plain[i]);
            if (atomic_load(&t.calls[i]) != r)
                fail_msg("nth=%d run %d: thread %d ran %d times", nth, r, i, atomic_load(&t.calls[i]));
        }
        if (sleep_us_between) usleep((useconds_t)sleep_us_between);
    }
    assert_int_equal(atomic_load(&t.bad_nth), 0);
    mt_pool_free(p);
}

static void test_counts_1_to_4(void **state) {
    (void)state;
    for (int nth = 1; nth <= 4; nth++) check_runs(nth, 2000, 0, 0);
}

/* Gaps longer than the spin window: workers go to sleep on the futex and
 * must be woken for every run. */
static void test_sleeping_workers(void **state) {
    (void)state;
    for (int nth = 2; nth <= 3; nth++) check_runs(nth, 30, 1000, 0);
}

/* Workers slower than the caller's spin window: the caller sleeps too. */
static void test_slow_workers(void **state) {
    (void)state;
    check_runs(2, 20, 0, 3000);
    check_runs(4, 10, 0, 1500);
}

static void tiny_fn(void *arg, int ith, int nth) {
    atomic_int *c = arg;
    (void)nth;
    atomic_fetch_add(c, ith + 1);
}

/* 100k back-to-back runs; also reports the cost per run. */
static void test_stress_100k(void **state) {
    (void)state;
    const int nths[] = {2, 3, 4};
    const int runs[] = {100000, 10000, 10000}; /* above 2 the machine's cores are oversubscribed */
    for (size_t k = 0; k < sizeof nths / sizeof nths[0]; k++) {
        const int nth = nths[k];
        mt_pool *p = NULL;
        assert_int_equal(mt_pool_init(&p, nth), MT_OK);
        atomic_int c;
        atomic_init(&c, 0);
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (int r = 0; r < runs[k]; r++) mt_pool_run(p, tiny_fn, &c);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        const double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3) / runs[k];
        printf("# pool nth=%d: %d runs, %.2f us per run\n", nth, runs[k], us);
        const long long expect = (long long)runs[k] * nth * (nth + 1) / 2;
        assert_int_equal((long long)atomic_load(&c), expect);
        mt_pool_free(p);
    }
}

static void test_init_errors_and_inline(void **state) {
    (void)state;
    mt_pool *p = (mt_pool *)&p;
    assert_int_equal(mt_pool_init(&p, 0), MT_ERR_ARG);
    assert_null(p);
    assert_int_equal(mt_pool_init(&p, -3), MT_ERR_ARG);
    mt_pool_free(NULL);
    assert_int_equal(mt_pool_size(NULL), 1);
    atomic_int c;
    atomic_init(&c, 0);
    mt_pool_run(NULL, tiny_fn, &c); /* no pool: runs inline as thread 0 of 1 */
    assert_int_equal(atomic_load(&c), 1);
    /* create and destroy repeatedly, with and without runs */
    for (int i = 0; i < 50; i++) {
        assert_int_equal(mt_pool_init(&p, 1 + i % 4), MT_OK);
        if (i % 2) mt_pool_run(p, tiny_fn, &c);
        mt_pool_free(p);
    }
}

static void test_split_range(void **state) {
    (void)state;
    const int64_t ns[] = {0, 1, 5, 15, 16, 17, 100, 511, 512, 4096, 14336};
    const int64_t aligns[] = {1, 4, 16, 32};
    for (size_t a = 0; a < sizeof ns / sizeof ns[0]; a++)
        for (size_t b = 0; b < sizeof aligns / sizeof aligns[0]; b++)
            for (int nth = 1; nth <= 7; nth++) {
                const int64_t n = ns[a], al = aligns[b];
                int64_t expect_begin = 0, maxlen = 0, minlen = n + 1;
                for (int ith = 0; ith < nth; ith++) {
                    int64_t s, e;
                    mt_split_range(n, ith, nth, al, &s, &e);
                    if (s != expect_begin || e < s || e > n)
                        fail_msg("n=%lld align=%lld nth=%d ith=%d: [%lld,%lld) after %lld", (long long)n,
                                 (long long)al, nth, ith, (long long)s, (long long)e, (long long)expect_begin);
                    if (s < n && s % al != 0) fail_msg("unaligned begin %lld (align %lld)", (long long)s, (long long)al);
                    expect_begin = e;
                    if (e - s > maxlen) maxlen = e - s;
                    if (e - s < minlen) minlen = e - s;
                }
                assert_int_equal(expect_begin, n); /* parts cover [0, n) exactly */
                /* balanced: one aligned unit, plus the partial unit at the end */
                if (maxlen - minlen >= 2 * al) fail_msg("n=%lld align=%lld nth=%d: parts %lld..%lld", (long long)n, (long long)al, nth, (long long)minlen, (long long)maxlen);
            }
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_split_range),
        cmocka_unit_test(test_init_errors_and_inline),
        cmocka_unit_test(test_counts_1_to_4),
        cmocka_unit_test(test_sleeping_workers),
        cmocka_unit_test(test_slow_workers),
        cmocka_unit_test(test_stress_100k),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
