/* s2s_dump.c — helper of tests/cli_seq2seq.sh (not a test by itself): loads
 * an encoder-decoder checkpoint and prints, as one JSON object, what the
 * runtime computes for an input/target pair, for an independent check
 * against transformers (tests/check_switch.py):
 *   s2s_dump MODEL INPUT_IDS TARGET_IDS      (ids comma-separated)
 * {"logits": [[vocab] per target token] (teacher-forced, one decoder call),
 *  "step_logits": the same, one decoder token per call (KV cache path),
 *  "enc_experts", "dec_experts": [sparse layer][token] (-1 dropped),
 *  "nll": summed NLL of the target, "greedy": greedy ids (at most 10)} */
#include "moetool/mt_seq2seq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse_ids(const char *s, int32_t *out, int cap) {
    int n = 0;
    while (*s && n < cap) {
        char *e;
        long v = strtol(s, &e, 10);
        if (e == s) return -1;
        out[n++] = (int32_t)v;
        s = *e == ',' ? e + 1 : e;
    }
    return n;
}

static void rows(const float *p, int n, int V) {
    printf("[");
    for (int i = 0; i < n; i++) {
        printf("%s[", i ? "," : "");
        for (int v = 0; v < V; v++) printf("%s%.9g", v ? "," : "", p[(size_t)i * V + v]);
        printf("]");
    }
    printf("]");
}

/* [layer][token]: the expert (top-1), or [first, second] (top-2) */
static void routes(const mt_s2s_model *m, int dec) {
    int L, n;
    const int32_t *r = mt_s2s_last_routing(m, dec, &L, &n);
    const int K = mt_s2s_model_config(m)->top_k;
    printf("[");
    for (int l = 0; l < L; l++) {
        printf("%s[", l ? "," : "");
        for (int t = 0; t < n; t++) {
            const int32_t *p = r + ((size_t)l * n + t) * K;
            if (K == 1) printf("%s%d", t ? "," : "", p[0]);
            else printf("%s[%d,%d]", t ? "," : "", p[0], p[1]);
        }
        printf("]");
    }
    printf("]");
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: s2s_dump MODEL INPUT_IDS TARGET_IDS\n");
        return 2;
    }
    static int32_t in[4096], tg[4096], din[4096], gen[16];
    const int ni = parse_ids(argv[2], in, 4096), nt = parse_ids(argv[3], tg, 4096);
    if (ni <= 0 || nt <= 0) return 2;
    mt_s2s_model *m;
    if (mt_s2s_load(&m, argv[1], 1)) {
        fprintf(stderr, "s2s_dump: %s\n", mt_last_error());
        return 1;
    }
    const mt_s2s_config *c = mt_s2s_model_config(m);
    const int V = c->vocab;
    float *lg = malloc((size_t)nt * V * sizeof *lg), *st = malloc((size_t)nt * V * sizeof *st);
    din[0] = c->decoder_start_id;
    for (int i = 1; i < nt; i++) din[i] = tg[i - 1];
    int rc = mt_s2s_encode(m, in, ni);
    printf("{\"enc_experts\":");
    routes(m, 0);
    if (!rc) rc = mt_s2s_decode(m, din, nt, lg);
    printf(",\"dec_experts\":");
    routes(m, 1);
    if (!rc) rc = mt_s2s_encode(m, in, ni);
    for (int i = 0; !rc && i < nt; i++) rc = mt_s2s_decode(m, &din[i], 1, st + (size_t)i * V);
    double nll = 0;
    int ng = 0;
    if (!rc) rc = mt_s2s_score(m, in, ni, tg, nt, &nll);
    if (!rc) rc = mt_s2s_greedy(m, in, ni, 10, 1, gen, &ng);
    if (rc) {
        fprintf(stderr, "s2s_dump: %s\n", mt_last_error());
        return 1;
    }
    printf(",\"logits\":");
    rows(lg, nt, V);
    printf(",\"step_logits\":");
    rows(st, nt, V);
    printf(",\"nll\":%.17g,\"greedy\":[", nll);
    for (int i = 0; i < ng; i++) printf("%s%d", i ? "," : "", gen[i]);
    printf("]}\n");
    free(lg);
    free(st);
    mt_s2s_free(m);
    return 0;
}
