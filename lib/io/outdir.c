/* outdir.c — public all-or-nothing output directories (mt_write.h) over the
 * private mt_out of fileutil.c. */
#define _GNU_SOURCE
#include "io_impl.h"
#include "moetool/mt_write.h"

#include <stdlib.h>
#include <string.h>

struct mt_outdir {
    mt_out out;
};

int mt_outdir_open(mt_outdir **out, const char *path) {
    *out = NULL;
    mt_outdir *o = calloc(1, sizeof *o);
    if (!o) return mt_seterr(MT_ERR_NOMEM, "out of memory");
    int rc = mt_out_open_dir(&o->out, path);
    if (rc) {
        free(o);
        return rc;
    }
    *out = o;
    return MT_OK;
}

const char *mt_outdir_path(const mt_outdir *o) { return o->out.tmp_path; }

int mt_outdir_commit(mt_outdir *o) {
    int rc = mt_out_commit(&o->out);
    mt_out_abort(&o->out); /* frees; removes nothing after a commit */
    free(o);
    return rc;
}

void mt_outdir_free(mt_outdir *o) {
    if (!o) return;
    mt_out_abort(&o->out);
    free(o);
}

int mt_write_text_file(const char *dir, const char *name, const char *text, size_t len) {
    return mt_write_small_file(dir, name, text, len);
}
