/* reduce.c — the data-parallel reduction behind reduce.h: one process, or
 * MPI (MPI_Allreduce on MPI_COMM_WORLD) when moetool is built with it.
 *
 * MPI is initialised only when a launcher started this process as one of
 * several ranks, so every other use of moetool (and a single-rank distill)
 * never calls into libmpi; linking it costs about 2 MB of RSS at start
 * (docs/distill.md). MPI may be initialised once per process: a second
 * data-parallel distill in the same process reuses it; MPI_Finalize runs at
 * exit. */
#include "reduce.h"

#include "moetool/mt_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef MT_HAVE_MPI
#include <limits.h>
#include <mpi.h>
#endif

static int env_int(const char *name) {
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end;
    const long v = strtol(s, &end, 10);
    return *end || v < 0 || v > 1 << 20 ? 0 : (int)v;
}

int dst_reduce_launcher_size(void) {
    int n = env_int("OMPI_COMM_WORLD_SIZE");
    if (!n) n = env_int("PMI_SIZE");
    return n > 1 ? n : 1;
}

int dst_reduce_launcher_rank(void) {
    const char *s = getenv("OMPI_COMM_WORLD_RANK");
    return s && *s ? env_int("OMPI_COMM_WORLD_RANK") : env_int("PMI_RANK");
}

int dst_reduce_local_size(int fallback) {
    int n = env_int("OMPI_COMM_WORLD_LOCAL_SIZE");
    if (!n) n = env_int("MPI_LOCALNRANKS");
    return n > 0 ? n : fallback;
}

static int single_allreduce(dst_reduce *r, float *x, size_t n) {
    (void)r, (void)x, (void)n; /* one rank: the sum is its own buffer */
    return MT_OK;
}
static void single_finalize(dst_reduce *r) { (void)r; }

#ifdef MT_HAVE_MPI
static void mpi_at_exit(void) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

static int mpi_allreduce(dst_reduce *r, float *x, size_t n) {
    (void)r;
    while (n) { /* counts are int */
        const int k = n > (size_t)(INT_MAX / 2) ? INT_MAX / 2 : (int)n;
        const int rc = MPI_Allreduce(MPI_IN_PLACE, x, k, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
        if (rc != MPI_SUCCESS) {
            char msg[MPI_MAX_ERROR_STRING];
            int len = 0;
            MPI_Error_string(rc, msg, &len);
            return mt_seterr(MT_ERR_IO, "MPI_Allreduce of %d floats failed: %s", k, msg);
        }
        x += k, n -= (size_t)k;
    }
    return MT_OK;
}
static void mpi_finalize(dst_reduce *r) { (void)r; /* at exit: MPI cannot be initialised twice */ }

static int mpi_init(dst_reduce *r) {
    int inited = 0, fin = 0;
    MPI_Finalized(&fin);
    if (fin) return mt_seterr(MT_ERR_INTERNAL, "MPI was already finalized in this process");
    MPI_Initialized(&inited);
    if (!inited) {
        int provided;
        /* only the calling thread talks to MPI; the thread pools do not */
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return mt_seterr(MT_ERR_IO, "MPI_Init failed (started by mpirun as one of several ranks)");
        atexit(mpi_at_exit);
        /* errors come back as codes, reported with one line, not as an abort */
        MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &r->rank);
    MPI_Comm_size(MPI_COMM_WORLD, &r->size);
    r->name = "mpi";
    r->allreduce_sum = mpi_allreduce;
    r->finalize = mpi_finalize;
    return MT_OK;
}
#endif

int dst_reduce_init(dst_reduce *r) {
    memset(r, 0, sizeof *r);
    r->name = "single";
    r->rank = 0, r->size = 1;
    r->allreduce_sum = single_allreduce;
    r->finalize = single_finalize;
    const int n = dst_reduce_launcher_size();
    if (n <= 1) return MT_OK;
#ifdef MT_HAVE_MPI
    return mpi_init(r);
#else
    return mt_seterr(MT_ERR_UNSUPPORTED, "started by mpirun as one of %d ranks, but this moetool was built without MPI: "
                     "refusing to train %d independent copies (rebuild with libopenmpi-dev installed, or run one "
                     "process)", n, n);
#endif
}
