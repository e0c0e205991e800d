/* distill_grad_dump.c — helper of tests/cli_distill_torch.sh: builds the
 * dense student of TEACHER (concat init), or loads the MoE STUDENT (a merge
 * output) when given, runs one training step's forward,
 * loss and backward on a batch of held-out text, and writes what an
 * independent PyTorch computation needs to check it:
 *   OUT/student/   the student (HF MistralForCausalLM or MixtralForCausalLM, f32)
 *   OUT/grads/     model.safetensors: the gradient under the same names
 *   OUT/tokens.i32, OUT/targets.i32 (B, T); OUT/teacher.f32 (B·T, V)
 *   OUT/loss.txt   "loss ce kd" as %.17g
 * usage: distill_grad_dump TEACHER TEXT OUT B T ALPHA TEMP [STUDENT] */
#include "distill_impl.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int dump(const char *dir, const char *name, const void *p, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int bad = fwrite(p, 1, n, f) != n;
    return fclose(f) || bad ? -1 : 0;
}

int main(int argc, char **argv) {
    if (argc != 8 && argc != 9) {
        fprintf(stderr, "usage: distill_grad_dump TEACHER TEXT OUT B T ALPHA TEMP [STUDENT]\n");
        return 2;
    }
    const char *out = argv[3];
    const int B = atoi(argv[4]), T = atoi(argv[5]);
    const float alpha = (float)atof(argv[6]), temp = (float)atof(argv[7]);
    mt_model *t = NULL, *sm = NULL;
    mt_model_opts mo;
    mt_model_opts_default(&mo);
    mo.n_threads = 2;
    mt_backend *be = NULL;
    mt_ctx *ctx = NULL;
    dt_model m;
    mt_config sc;
    int32_t *ids = NULL;
    size_t n = 0;
    uint64_t rng = 7;
    char path[4096];
    if (mt_model_load(&t, argv[1], &mo) || mt_tok_encode_file(mt_model_tokenizer(t), argv[2], 0, &ids, &n, NULL) ||
        mt_backend_cpu_init(&be, 2))
        goto fail;
    const mt_config *tc = mt_model_config(t);
    const int V = tc->vocab, W = tc->top_k * tc->ffn;
    if (n < (size_t)B * (T + 1) * 3) {
        fprintf(stderr, "text too short\n");
        return 1;
    }
    dt_config dc;
    if (argc == 9) {
        if (mt_model_load(&sm, argv[8], &mo) || dst_moe_config(&dc, &sc, sm, argv[8]) || dt_model_init(&m, &dc, B, T, be) ||
            dst_student_from_moe(&m, sm) || mt_ctx_init(&ctx, t, T, T))
            goto fail;
    } else {
        dst_engine_config(&dc, tc, W);
        if (dt_model_init(&m, &dc, B, T, be) || dst_student_config(&sc, tc, W) ||
            dst_student_from_teacher(&m, t, MT_DISTILL_INIT_CONCAT, ids, n, 4096, 128, &rng) ||
            mt_ctx_init(&ctx, t, T, T))
            goto fail;
    }
    int32_t *tok = malloc((size_t)B * T * 4), *tgt = malloc((size_t)B * T * 4);
    float *tl = malloc((size_t)B * T * V * 4);
    for (int b = 0; b < B; b++) {
        const size_t off = (size_t)b * 3 * (T + 1);
        memcpy(tok + (size_t)b * T, ids + off, (size_t)T * 4);
        memcpy(tgt + (size_t)b * T, ids + off + 1, (size_t)T * 4);
    }
    if (dst_teacher_logits(ctx, tok, B, T, V, tl)) goto fail;
    dt_forward(&m, tok);
    dt_loss L = dt_loss_backward_logits(&m, tgt, tl, alpha, temp);
    dt_backward(&m, tok);
    mkdir(out, 0755);
    snprintf(path, sizeof path, "%s/student", out);
    mkdir(path, 0755);
    if (dst_write_hf(&m, m.params, &sc, mt_model_ckpt(t), path, 1)) goto fail;
    snprintf(path, sizeof path, "%s/grads", out);
    mkdir(path, 0755);
    if (dst_write_hf(&m, m.grads, &sc, mt_model_ckpt(t), path, 0)) goto fail;
    char txt[128];
    snprintf(txt, sizeof txt, "%.17g %.17g %.17g\n", L.loss, L.ce, L.kd);
    if (dump(out, "tokens.i32", tok, (size_t)B * T * 4) || dump(out, "targets.i32", tgt, (size_t)B * T * 4) ||
        dump(out, "teacher.f32", tl, (size_t)B * T * V * 4) || dump(out, "loss.txt", txt, strlen(txt))) {
        fprintf(stderr, "cannot write into %s\n", out);
        return 1;
    }
    printf("loss %.9f ce %.9f kd %.9f\n", L.loss, L.ce, L.kd);
    free(tok), free(tgt), free(tl), free(ids);
    mt_ctx_free(ctx);
    dt_model_free(&m);
    mt_config_free(&sc);
    mt_backend_free(be);
    mt_model_free(sm);
    mt_model_free(t);
    return 0;
fail:
    fprintf(stderr, "distill_grad_dump: %s\n", mt_last_error());
    return 1;
}
