/* reduce.h — private to lib/distill: the one interface data-parallel
 * training goes through. Every rank computes the gradient of its share of a
 * batch; allreduce_sum leaves the sum over all ranks in every rank's buffer,
 * so every rank then takes the same optimiser step. Implementations: one
 * process (size 1, nothing to reduce) and MPI (compiled in when CMake finds
 * it: MT_HAVE_MPI); a device backend's (NCCL) slots in as a third. */
#ifndef MT_DISTILL_REDUCE_H
#define MT_DISTILL_REDUCE_H

#include <stddef.h>

typedef struct dst_reduce dst_reduce;
struct dst_reduce {
    const char *name; /* "single", "mpi"                 */
    int rank, size;   /* this process, processes in all   */
    /* In place: x[i] = Σ over ranks of x[i], the same floats on every rank.
     * MT_OK or a status (mt_seterr). */
    int (*allreduce_sum)(dst_reduce *r, float *x, size_t n);
    void (*finalize)(dst_reduce *r);
};

/* The implementation the process was started for: MPI when a launcher
 * (mpirun: OMPI_COMM_WORLD_SIZE, or PMI_SIZE) says there is more than one
 * rank, else single. Started by mpirun with several ranks but built without
 * MPI: refused with one line (the ranks would train independent copies). */
int dst_reduce_init(dst_reduce *r);
/* Ranks the launcher announces in the environment (1 when none), and this
 * process's rank among them (0 when none). */
int dst_reduce_launcher_size(void);
int dst_reduce_launcher_rank(void);
/* Ranks on this machine the launcher announces (OMPI_COMM_WORLD_LOCAL_SIZE,
 * MPI_LOCALNRANKS), else `fallback`. */
int dst_reduce_local_size(int fallback);

#endif
