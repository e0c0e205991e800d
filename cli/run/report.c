/* report.c — summary.json, report.md and report.html of a recipe run
 * (report.h). The HTML is one file: inline CSS and SVG, no scripts, no
 * network, so a CI artifact opens anywhere. */
#define _GNU_SOURCE
#include "report.h"

#include <dirent.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef MT_VERSION
#define MT_VERSION "0.1.0"
#endif

static uint64_t tree_bytes(const char *path, int depth) {
    struct stat sb;
    if (!path || stat(path, &sb) != 0) return 0;
    if (!S_ISDIR(sb.st_mode)) return (uint64_t)sb.st_size;
    if (depth > 8) return 0;
    DIR *d = opendir(path);
    if (!d) return 0;
    uint64_t n = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        char *p = NULL;
        if (asprintf(&p, "%s/%s", path, e->d_name) >= 0) n += tree_bytes(p, depth + 1);
        free(p);
    }
    closedir(d);
    return n;
}

static double num(const json_t *j, const char *a, const char *b) {
    const json_t *x = json_object_get(j, a);
    if (b) x = json_object_get(x, b);
    return json_is_number(x) ? json_number_value(x) : NAN;
}

static const char *step_name(const report_input *in, int i) { return in->r->steps[i].name; }

/* Where a gate reads: its eval step, and the named text when it has one. */
static const char *gate_where(const report_input *in, const recipe_gate *g, char *b, size_t n) {
    if (g->text < 0) return step_name(in, g->step);
    snprintf(b, n, "%s (text %s)", step_name(in, g->step), in->r->texts[g->text].name);
    return b;
}

static void limit_text(const recipe_gate *g, char *b, size_t n) {
    if (g->has_min && g->has_max) snprintf(b, n, "%g..%g", g->min, g->max);
    else if (g->has_min) snprintf(b, n, ">= %g", g->min);
    else snprintf(b, n, "<= %g", g->max);
}

/* How far a failed value is from the limit it missed: absolute and relative. */
static void miss_text(const report_gate *rg, char *b, size_t n) {
    const recipe_gate *g = rg->gate;
    if (!rg->have) {
        snprintf(b, n, "not measured (the step's result lacks it)");
        return;
    }
    if (rg->pass) {
        snprintf(b, n, "ok");
        return;
    }
    const double lim = g->has_min && rg->value < g->min ? g->min : g->max;
    const double d = rg->value - lim;
    if (lim != 0) snprintf(b, n, "FAIL by %+.4g (%+.1f%%)", d, 100.0 * d / fabs(lim));
    else snprintf(b, n, "FAIL by %+.4g", d);
}

void report_gate_table(const report_input *in, FILE *f) {
    fprintf(f, "%-18s %-26s %14s  %-14s %s\n", "gate", "step", "value", "limit", "result");
    for (size_t i = 0; i < in->n_gates; i++) {
        const report_gate *rg = &in->gates[i];
        char lim[64], miss[96];
        limit_text(rg->gate, lim, sizeof lim);
        miss_text(rg, miss, sizeof miss);
        char where[200];
        fprintf(f, "%-18s %-26s %14.6g  %-14s %s\n", recipe_metric_name(rg->gate->metric),
                gate_where(in, rg->gate, where, sizeof where),
                rg->have ? rg->value : NAN, lim, miss);
    }
}

static json_t *summary(const report_input *in) {
    const recipe *r = in->r;
    json_t *steps = json_array(), *gates = json_array();
    for (size_t k = 0; k < r->n_steps; k++) {
        const int i = r->order[k];
        const report_step *s = &in->steps[i];
        json_t *cmd = json_array();
        for (int a = 1; a < s->argc; a++) json_array_append_new(cmd, json_string(s->argv[a]));
        json_t *st = json_pack("{s:s, s:s, s:s, s:b, s:b, s:f, s:o}", "name", r->steps[i].name, "verb",
                               r->steps[i].verb->name, "key", s->key, "cached", s->cached, "failed", s->failed,
                               "seconds", s->seconds, "command", cmd);
        if (s->output) {
            json_object_set_new(st, "output", json_string(s->output));
            json_object_set_new(st, "output_bytes", json_integer((json_int_t)tree_bytes(s->output, 0)));
        }
        json_object_set(st, "result", s->result ? (json_t *)s->result : json_null());
        json_array_append_new(steps, st);
    }
    for (size_t g = 0; g < in->n_gates; g++) {
        const report_gate *rg = &in->gates[g];
        json_t *o = json_pack("{s:s, s:s, s:b}", "metric", recipe_metric_name(rg->gate->metric), "step",
                              step_name(in, rg->gate->step), "pass", rg->pass);
        json_object_set_new(o, "value", rg->have ? json_real(rg->value) : json_null());
        if (rg->gate->text >= 0) json_object_set_new(o, "text", json_string(in->r->texts[rg->gate->text].name));
        if (rg->gate->has_min) json_object_set_new(o, "min", json_real(rg->gate->min));
        if (rg->gate->has_max) json_object_set_new(o, "max", json_real(rg->gate->max));
        json_array_append_new(gates, o);
    }
    return json_pack("{s:s, s:s, s:s, s:s, s:i, s:f, s:o, s:o}", "recipe", in->recipe_path, "workdir", in->work,
                     "tool_version", MT_VERSION, "model", r->model, "exit_code", in->exit_code, "seconds", in->seconds,
                     "steps", steps, "gates", gates);
}

static void md_cell(FILE *f, double v, const char *fmt) {
    if (isnan(v)) fputs(" – |", f);
    else {
        fputc(' ', f);
        fprintf(f, fmt, v);
        fputs(" |", f);
    }
}

static void write_md(const report_input *in, FILE *f) {
    const recipe *r = in->r;
    fprintf(f, "# moetool run: %s\n\n", in->recipe_path);
    fprintf(f, "Base model `%s`; %s; %.1f s.\n\n", r->model,
            in->exit_code == 0 ? "**all gates hold**" : in->exit_code == 3 ? "**a gate failed**" : "**a step failed**",
            in->seconds);
    fprintf(f, "| step | verb | status | seconds | output MiB | ppl | ref ppl | KL | top-1 | bits/weight |\n"
               "|---|---|---|---|---|---|---|---|---|---|\n");
    for (size_t k = 0; k < r->n_steps; k++) {
        const int i = r->order[k];
        const report_step *s = &in->steps[i];
        fprintf(f, "| %s | %s | %s | %.1f |", r->steps[i].name, r->steps[i].verb->name,
                s->failed ? "failed" : s->cached ? "cached" : s->result ? "ran" : "not run", s->seconds);
        md_cell(f, s->output ? (double)tree_bytes(s->output, 0) / 1048576.0 : NAN, "%.2f");
        md_cell(f, num(s->result, "ppl", NULL), "%.4f");
        md_cell(f, num(s->result, "ref_ppl", NULL), "%.4f");
        md_cell(f, num(s->result, "kl_mean", NULL), "%.5f");
        md_cell(f, num(s->result, "top1_agree", NULL), "%.4f");
        double bpw = num(s->result, "size", "bits_per_weight");
        if (isnan(bpw)) bpw = num(s->result, "bits_per_weight", NULL);
        md_cell(f, bpw, "%.3f");
        fputc('\n', f);
    }
    if (in->n_gates) {
        fprintf(f, "\n## Gates\n\n| gate | step | value | limit | result |\n|---|---|---|---|---|\n");
        for (size_t g = 0; g < in->n_gates; g++) {
            const report_gate *rg = &in->gates[g];
            char lim[64], miss[96];
            limit_text(rg->gate, lim, sizeof lim);
            miss_text(rg, miss, sizeof miss);
            char where[200];
            fprintf(f, "| %s | %s | %.6g | %s | %s |\n", recipe_metric_name(rg->gate->metric),
                    gate_where(in, rg->gate, where, sizeof where), rg->value, lim, miss);
        }
    }
    for (size_t k = 0; k < r->n_steps; k++) {
        const int i = r->order[k];
        const json_t *log = json_object_get(in->steps[i].result, "log");
        const size_t n = json_is_array(log) ? json_array_size(log) : 0;
        if (!n) continue;
        const json_t *a = json_array_get(log, 0), *b = json_array_get(log, n - 1);
        fprintf(f, "\nDistill step %s: %zu steps, loss %.4f -> %.4f (KD %.4f -> %.4f, CE %.4f -> %.4f); the loss curve "
                   "is in report.html.\n", r->steps[i].name, n, num(a, "loss", NULL), num(b, "loss", NULL),
                num(a, "kd", NULL), num(b, "kd", NULL), num(a, "ce", NULL), num(b, "ce", NULL));
    }
    fprintf(f, "\n## Commands\n\n```\n");
    for (size_t k = 0; k < r->n_steps; k++) {
        const report_step *s = &in->steps[r->order[k]];
        fputs("moetool", f);
        for (int a = 1; a < s->argc; a++) fprintf(f, " %s", s->argv[a]);
        fputc('\n', f);
    }
    fprintf(f, "```\n");
}

static void html_esc(FILE *f, const char *s) {
    for (; s && *s; s++) {
        switch (*s) {
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '&': fputs("&amp;", f); break;
        case '"': fputs("&quot;", f); break;
        default: fputc(*s, f);
        }
    }
}

/* Size (MiB) against perplexity: each eval step's model, and the base model
 * (its reference perplexity) when an eval step had a ref. */
static void svg_scatter(const report_input *in, FILE *f) {
    const recipe *r = in->r;
    double xs[66], ys[66];
    const char *names[66];
    int n = 0;
    for (size_t i = 0; i < r->n_steps && n < 64; i++) {
        const json_t *res = in->steps[i].result;
        const double ppl = num(res, "ppl", NULL), bytes = num(res, "size", "file_bytes");
        if (isnan(ppl) || isnan(bytes)) continue;
        xs[n] = bytes / 1048576.0, ys[n] = ppl, names[n] = r->steps[i].name, n++;
        const double ref = num(res, "ref_ppl", NULL);
        if (!isnan(ref) && n < 65) {
            int have_base = 0;
            for (int k = 0; k < n; k++) have_base |= !strcmp(names[k], "base model");
            if (!have_base) xs[n] = (double)tree_bytes(r->model, 0) / 1048576.0, ys[n] = ref, names[n] = "base model", n++;
        }
    }
    if (!n) return;
    double x0 = 0, x1 = xs[0], y0 = ys[0], y1 = ys[0];
    for (int i = 0; i < n; i++) {
        if (xs[i] > x1) x1 = xs[i];
        if (ys[i] < y0) y0 = ys[i];
        if (ys[i] > y1) y1 = ys[i];
    }
    x1 *= 1.1;
    const double pad = (y1 - y0) * 0.15 + 1e-9 + y1 * 0.02;
    y0 -= pad, y1 += pad;
    const int W = 520, H = 300, L = 60, B = 40;
    fprintf(f, "<h2>Size and perplexity</h2>\n<svg id=\"size-ppl\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
               "height=\"%d\" font-family=\"sans-serif\" font-size=\"11\">\n", W, H);
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>", L, H - B, W - 10, H - B);
    fprintf(f, "<line x1=\"%d\" y1=\"10\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>\n", L, L, H - B);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">file size (MiB)</text>", (L + W) / 2, H - 8);
    fprintf(f, "<text x=\"14\" y=\"%d\" transform=\"rotate(-90 14 %d)\" text-anchor=\"middle\">perplexity</text>\n",
            H / 2, H / 2);
    for (int t = 0; t <= 4; t++) {
        const double xv = x0 + (x1 - x0) * t / 4, yv = y0 + (y1 - y0) * t / 4;
        const double px = L + (W - 10 - L) * t / 4.0, py = H - B - (H - B - 10) * t / 4.0;
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.1f</text>", px, H - B + 14, xv);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", L - 4, py + 4, yv);
    }
    for (int i = 0; i < n; i++) {
        const double px = L + (W - 10 - L) * (xs[i] - x0) / (x1 - x0), py = H - B - (H - B - 10) * (ys[i] - y0) / (y1 - y0);
        const int base = !strcmp(names[i], "base model");
        fprintf(f, "<circle class=\"point\" cx=\"%.1f\" cy=\"%.1f\" r=\"5\" fill=\"%s\"/><text x=\"%.1f\" y=\"%.1f\">",
                px, py, base ? "#888" : "#1f77b4", px + 8, py - 6);
        html_esc(f, names[i]);
        fprintf(f, " (%.2f MiB, %.3f)</text>\n", xs[i], ys[i]);
    }
    fprintf(f, "</svg>\n");
}

/* Per-layer routing heat map of one eval step: share of routed tokens per
 * expert, white at 0, dark at twice the uniform share. */
static void svg_routing(const report_input *in, FILE *f, int i) {
    const json_t *rt = json_object_get(in->steps[i].result, "routing");
    if (!json_is_array(rt) || json_array_size(rt) == 0) return;
    const size_t nl = json_array_size(rt), ne = json_array_size(json_array_get(rt, 0));
    if (!ne || nl > 512 || ne > 1024) return;
    const int cw = ne > 64 ? 6 : 22, ch = nl > 64 ? 6 : 18, L = 50, T = 20;
    fprintf(f, "<h3>Routing: ");
    html_esc(f, in->r->steps[i].name);
    fprintf(f, "</h3>\n<svg class=\"routing\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "font-family=\"sans-serif\" font-size=\"10\">\n", L + cw * (int)ne + 10, T + ch * (int)nl + 10);
    for (size_t l = 0; l < nl; l++) {
        const json_t *row = json_array_get(rt, l);
        double tot = 0;
        for (size_t e = 0; e < json_array_size(row); e++) tot += json_number_value(json_array_get(row, e));
        fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"end\">layer %zu</text>", L - 4, T + ch * (int)l + ch - 5, l);
        for (size_t e = 0; e < ne && e < json_array_size(row); e++) {
            const double share = tot > 0 ? json_number_value(json_array_get(row, e)) / tot : 0;
            double v = share * (double)ne / 2.0;
            if (v > 1) v = 1;
            const int c = (int)(255 - 200 * v);
            fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"rgb(%d,%d,255)\"><title>layer %zu expert "
                       "%zu: %.1f%%</title></rect>", L + cw * (int)e, T + ch * (int)l, cw - 1, ch - 1, c, c, l, e,
                    100 * share);
        }
        fputc('\n', f);
    }
    if (ne <= 64)
        for (size_t e = 0; e < ne; e++)
            fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">%zu</text>", L + cw * (int)e + cw / 2, T - 6, e);
    fprintf(f, "</svg>\n");
}

/* The loss curve of a distill step, from its --json log: step against the
 * total loss, its KD part (KL at the temperature) and its CE part. */
static void svg_loss(const report_input *in, FILE *f, int i) {
    const json_t *log = json_object_get(in->steps[i].result, "log");
    const size_t n = json_is_array(log) ? json_array_size(log) : 0;
    if (n < 1 || n > 10000000) return;
    static const char *const keys[3] = {"loss", "kd", "ce"}, *const colors[3] = {"#333", "#ff7f0e", "#1f77b4"};
    static const char *const labels[3] = {"loss", "KD (KL at T)", "CE"};
    double x0 = INFINITY, x1 = -INFINITY, y1 = 0;
    for (size_t k = 0; k < n; k++) {
        const json_t *e = json_array_get(log, k);
        const double x = num(e, "step", NULL);
        if (isnan(x)) return;
        x0 = x < x0 ? x : x0, x1 = x > x1 ? x : x1;
        for (int c = 0; c < 3; c++) {
            const double y = num(e, keys[c], NULL);
            if (isfinite(y) && y > y1) y1 = y;
        }
    }
    if (x1 <= x0) x1 = x0 + 1;
    if (!(y1 > 0)) y1 = 1;
    y1 *= 1.05;
    const int W = 520, H = 300, L = 60, B = 40, R = 110;
    fprintf(f, "<h3>Distill loss: ");
    html_esc(f, in->r->steps[i].name);
    fprintf(f, "</h3>\n<svg class=\"loss-curve\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "font-family=\"sans-serif\" font-size=\"11\">\n", W, H);
    fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>", L, H - B, W - R, H - B);
    fprintf(f, "<line x1=\"%d\" y1=\"10\" x2=\"%d\" y2=\"%d\" stroke=\"#333\"/>\n", L, L, H - B);
    fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">training step</text>", (L + W - R) / 2, H - 8);
    fprintf(f, "<text x=\"14\" y=\"%d\" transform=\"rotate(-90 14 %d)\" text-anchor=\"middle\">loss</text>\n", H / 2,
            H / 2);
    for (int t = 0; t <= 4; t++) {
        const double px = L + (W - R - L) * t / 4.0, py = H - B - (H - B - 10) * t / 4.0;
        fprintf(f, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">%.0f</text>", px, H - B + 14, x0 + (x1 - x0) * t / 4);
        fprintf(f, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.2f</text>\n", L - 4, py + 4, y1 * t / 4);
    }
    for (int c = 0; c < 3; c++) {
        fprintf(f, "<polyline class=\"loss-%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"", keys[c],
                colors[c]);
        for (size_t k = 0; k < n; k++) {
            const json_t *e = json_array_get(log, k);
            const double x = num(e, "step", NULL), y = num(e, keys[c], NULL);
            if (!isfinite(y)) continue;
            fprintf(f, "%s%.1f,%.1f", k ? " " : "", L + (W - R - L) * (x - x0) / (x1 - x0), H - B - (H - B - 10) * y / y1);
        }
        fprintf(f, "\"/><text x=\"%d\" y=\"%d\" fill=\"%s\">%s</text>\n", W - R + 8, 20 + 16 * c, colors[c], labels[c]);
    }
    fprintf(f, "</svg>\n");
}

static void write_html(const report_input *in, FILE *f) {
    const recipe *r = in->r;
    fprintf(f, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>moetool run: ");
    html_esc(f, in->recipe_path);
    fprintf(f, "</title>\n<style>body{font-family:sans-serif;margin:2em;max-width:60em}table{border-collapse:collapse}"
               "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td:first-child{text-align:left}"
               ".fail{color:#b00;font-weight:bold}.ok{color:#070}</style></head><body>\n<h1>moetool run: ");
    html_esc(f, in->recipe_path);
    fprintf(f, "</h1>\n<p>Base model <code>");
    html_esc(f, r->model);
    fprintf(f, "</code>; <span class=\"%s\">%s</span>; %.1f s.</p>\n", in->exit_code ? "fail" : "ok",
            in->exit_code == 0 ? "all gates hold" : in->exit_code == 3 ? "a gate failed" : "a step failed", in->seconds);
    fprintf(f, "<table id=\"steps\"><tr><th>step</th><th>verb</th><th>status</th><th>seconds</th><th>output MiB</th>"
               "<th>ppl</th><th>KL</th><th>top-1</th></tr>\n");
    for (size_t k = 0; k < r->n_steps; k++) {
        const int i = r->order[k];
        const report_step *s = &in->steps[i];
        fprintf(f, "<tr><td>");
        html_esc(f, r->steps[i].name);
        fprintf(f, "</td><td>%s</td><td>%s</td><td>%.1f</td>", r->steps[i].verb->name,
                s->failed ? "failed" : s->cached ? "cached" : s->result ? "ran" : "not run", s->seconds);
        const double v[4] = {s->output ? (double)tree_bytes(s->output, 0) / 1048576.0 : NAN, num(s->result, "ppl", NULL),
                             num(s->result, "kl_mean", NULL), num(s->result, "top1_agree", NULL)};
        for (int c = 0; c < 4; c++) isnan(v[c]) ? fprintf(f, "<td>–</td>") : fprintf(f, "<td>%.4g</td>", v[c]);
        fprintf(f, "</tr>\n");
    }
    fprintf(f, "</table>\n");
    if (in->n_gates) {
        fprintf(f, "<h2>Gates</h2>\n<table id=\"gates\"><tr><th>gate</th><th>step</th><th>value</th><th>limit</th>"
                   "<th>result</th></tr>\n");
        for (size_t g = 0; g < in->n_gates; g++) {
            const report_gate *rg = &in->gates[g];
            char lim[64], miss[96];
            limit_text(rg->gate, lim, sizeof lim);
            miss_text(rg, miss, sizeof miss);
            fprintf(f, "<tr><td>%s</td><td>", recipe_metric_name(rg->gate->metric));
            char where[200];
            html_esc(f, gate_where(in, rg->gate, where, sizeof where));
            fprintf(f, "</td><td>%.6g</td><td>", rg->value);
            html_esc(f, lim);
            fprintf(f, "</td><td class=\"%s\">%s</td></tr>\n", rg->pass ? "ok" : "fail", miss);
        }
        fprintf(f, "</table>\n");
    }
    svg_scatter(in, f);
    for (size_t i = 0; i < r->n_steps; i++) svg_routing(in, f, (int)i);
    for (size_t i = 0; i < r->n_steps; i++) svg_loss(in, f, (int)i);
    fprintf(f, "</body></html>\n");
}

static int write_file(const char *work, const char *name, void (*fn)(const report_input *, FILE *),
                      const report_input *in, char *err, size_t errn) {
    char *p = NULL, *tmp = NULL;
    if (asprintf(&p, "%s/%s", work, name) < 0 || asprintf(&tmp, "%s/%s.part", work, name) < 0) {
        free(p);
        return snprintf(err, errn, "out of memory"), -1;
    }
    FILE *f = fopen(tmp, "wb");
    int rc = -1;
    if (f) {
        fn(in, f);
        rc = ferror(f) ? -1 : 0;
        if (fclose(f) != 0) rc = -1;
        if (rc == 0) rc = rename(tmp, p);
    }
    if (rc) {
        snprintf(err, errn, "%s: cannot write", p);
        unlink(tmp);
    }
    free(p);
    free(tmp);
    return rc;
}

int report_write(const report_input *in, FILE *json_out, char *err, size_t errn) {
    json_t *s = summary(in);
    char *txt = s ? json_dumps(s, JSON_INDENT(2)) : NULL;
    json_decref(s);
    if (!txt) return snprintf(err, errn, "out of memory"), -1;
    char *p = NULL;
    int rc = asprintf(&p, "%s/summary.json", in->work) < 0 ? -1 : 0;
    FILE *f = rc == 0 ? fopen(p, "wb") : NULL;
    if (!f || fputs(txt, f) < 0 || fputc('\n', f) < 0) rc = -1;
    if (f && fclose(f) != 0) rc = -1;
    if (rc) snprintf(err, errn, "%s: cannot write", p ? p : "summary.json");
    if (json_out) fprintf(json_out, "%s\n", txt);
    free(p);
    free(txt);
    if (rc) return rc;
    if (write_file(in->work, "report.md", write_md, in, err, errn)) return -1;
    return write_file(in->work, "report.html", write_html, in, err, errn);
}
