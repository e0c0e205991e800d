/* tokenizer_fairseq.c — fairseq's id layout over a sentencepiece model
 * (sentencepiece.bpe.model: NLLB-200 / NLLB-MoE), as transformers 4.40.2's
 * NllbTokenizer and fairseq's Dictionary number it:
 *
 *   0 <s>   1 <pad>   2 </s>   3 <unk>
 *   4 ..    the sentencepiece pieces 3.. (sentencepiece id + 1; the model's
 *           own pieces 0-2 must be <unk>, <s>, </s>, sentencepiece's
 *           defaults, which the fairseq symbols above replace)
 *   then    the language codes (eng_Latn, ...), then <mask>
 *
 * The codes are tokenizer_config.json's "additional_special_tokens" when it
 * lists them (strings or {"content": ...} objects), else NLLB's 202
 * (FAIRSEQ_LANGUAGE_CODES). When tokenizer_config.json's
 * "added_tokens_decoder" gives ids to the codes and <mask>, those ids win
 * (the released NLLB files list them in the layout above; transformers
 * building the tokenizer without them numbers <mask> first), provided they
 * fill exactly the slots after the pieces. Every fairseq symbol, code and
 * <mask> is a special token cut out of the raw text before sentencepiece
 * runs, as transformers' added tokens are. */
#include "tokenizer_impl.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

static const char *const nllb_codes[] = {
    "ace_Arab", "ace_Latn", "acm_Arab", "acq_Arab", "aeb_Arab", "afr_Latn", "ajp_Arab", "aka_Latn", "amh_Ethi",
    "apc_Arab", "arb_Arab", "ars_Arab", "ary_Arab", "arz_Arab", "asm_Beng", "ast_Latn", "awa_Deva", "ayr_Latn",
    "azb_Arab", "azj_Latn", "bak_Cyrl", "bam_Latn", "ban_Latn", "bel_Cyrl", "bem_Latn", "ben_Beng", "bho_Deva",
    "bjn_Arab", "bjn_Latn", "bod_Tibt", "bos_Latn", "bug_Latn", "bul_Cyrl", "cat_Latn", "ceb_Latn", "ces_Latn",
    "cjk_Latn", "ckb_Arab", "crh_Latn", "cym_Latn", "dan_Latn", "deu_Latn", "dik_Latn", "dyu_Latn", "dzo_Tibt",
    "ell_Grek", "eng_Latn", "epo_Latn", "est_Latn", "eus_Latn", "ewe_Latn", "fao_Latn", "pes_Arab", "fij_Latn",
    "fin_Latn", "fon_Latn", "fra_Latn", "fur_Latn", "fuv_Latn", "gla_Latn", "gle_Latn", "glg_Latn", "grn_Latn",
    "guj_Gujr", "hat_Latn", "hau_Latn", "heb_Hebr", "hin_Deva", "hne_Deva", "hrv_Latn", "hun_Latn", "hye_Armn",
    "ibo_Latn", "ilo_Latn", "ind_Latn", "isl_Latn", "ita_Latn", "jav_Latn", "jpn_Jpan", "kab_Latn", "kac_Latn",
    "kam_Latn", "kan_Knda", "kas_Arab", "kas_Deva", "kat_Geor", "knc_Arab", "knc_Latn", "kaz_Cyrl", "kbp_Latn",
    "kea_Latn", "khm_Khmr", "kik_Latn", "kin_Latn", "kir_Cyrl", "kmb_Latn", "kon_Latn", "kor_Hang", "kmr_Latn",
    "lao_Laoo", "lvs_Latn", "lij_Latn", "lim_Latn", "lin_Latn", "lit_Latn", "lmo_Latn", "ltg_Latn", "ltz_Latn",
    "lua_Latn", "lug_Latn", "luo_Latn", "lus_Latn", "mag_Deva", "mai_Deva", "mal_Mlym", "mar_Deva", "min_Latn",
    "mkd_Cyrl", "plt_Latn", "mlt_Latn", "mni_Beng", "khk_Cyrl", "mos_Latn", "mri_Latn", "zsm_Latn", "mya_Mymr",
    "nld_Latn", "nno_Latn", "nob_Latn", "npi_Deva", "nso_Latn", "nus_Latn", "nya_Latn", "oci_Latn", "gaz_Latn",
    "ory_Orya", "pag_Latn", "pan_Guru", "pap_Latn", "pol_Latn", "por_Latn", "prs_Arab", "pbt_Arab", "quy_Latn",
    "ron_Latn", "run_Latn", "rus_Cyrl", "sag_Latn", "san_Deva", "sat_Beng", "scn_Latn", "shn_Mymr", "sin_Sinh",
    "slk_Latn", "slv_Latn", "smo_Latn", "sna_Latn", "snd_Arab", "som_Latn", "sot_Latn", "spa_Latn", "als_Latn",
    "srd_Latn", "srp_Cyrl", "ssw_Latn", "sun_Latn", "swe_Latn", "swh_Latn", "szl_Latn", "tam_Taml", "tat_Cyrl",
    "tel_Telu", "tgk_Cyrl", "tgl_Latn", "tha_Thai", "tir_Ethi", "taq_Latn", "taq_Tfng", "tpi_Latn", "tsn_Latn",
    "tso_Latn", "tuk_Latn", "tum_Latn", "tur_Latn", "twi_Latn", "tzm_Tfng", "uig_Arab", "ukr_Cyrl", "umb_Latn",
    "urd_Arab", "uzn_Latn", "vec_Latn", "vie_Latn", "war_Latn", "wol_Latn", "xho_Latn", "ydd_Hebr", "yor_Latn",
    "yue_Hant", "zho_Hans", "zho_Hant", "zul_Latn",
};
#define N_NLLB_CODES (sizeof nllb_codes / sizeof nllb_codes[0])

static const char *entry_str(const json_t *v) {
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v) && json_is_string(json_object_get(v, "content")))
        return json_string_value(json_object_get(v, "content"));
    return NULL;
}

int mt_tok_apply_fairseq(mt_tokenizer **tp, const char *cfg_text, size_t cfg_len, const char *name) {
    mt_tokenizer *t = *tp, *f = NULL;
    const size_t n_spm = t->n_vocab;
    if (n_spm < 4 || t->unk != 0 || t->pieces[1].type != MT_PIECE_CONTROL || t->pieces[2].type != MT_PIECE_CONTROL)
        return mt_seterr(MT_ERR_UNSUPPORTED, "%s: fairseq's layout needs <unk>, <s>, </s> as sentencepiece pieces 0, 1, 2",
                         name);
    for (size_t i = 3; i < n_spm; i++)
        if (t->pieces[i].type == MT_PIECE_USER_DEFINED || t->pieces[i].type == MT_PIECE_CONTROL)
            return mt_seterr(MT_ERR_UNSUPPORTED, "%s: piece %zu is a control or user-defined piece, which fairseq's layout "
                             "does not place", name, i);
    json_t *cfg = cfg_text ? json_loadb(cfg_text, cfg_len, 0, NULL) : NULL;
    const json_t *ast = json_is_object(cfg) ? json_object_get(cfg, "additional_special_tokens") : NULL;
    const json_t *atd = json_is_object(cfg) ? json_object_get(cfg, "added_tokens_decoder") : NULL;
    size_t n_lang = N_NLLB_CODES;
    const int from_cfg = json_is_array(ast) && json_array_size(ast) > 0;
    if (from_cfg) {
        n_lang = json_array_size(ast);
        for (size_t i = 0; i < n_lang; i++) {
            const char *s = entry_str(json_array_get(ast, i));
            if (!s || !s[0] || strlen(s) > 64) {
                json_decref(cfg);
                return mt_seterr(MT_ERR_FORMAT, "%s: additional_special_tokens[%zu] is not a language code", name, i);
            }
        }
    }
    if (n_lang > 100000) {
        json_decref(cfg);
        return mt_seterr(MT_ERR_FORMAT, "%s: %zu additional special tokens (at most 100000)", name, n_lang);
    }
    const size_t first = n_spm + 1, n_extra = n_lang + 1; /* codes, then <mask> */
    const char **slot = calloc(n_extra, sizeof *slot);
    int rc = MT_OK;
    if (!slot) {
        rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
        goto done;
    }
    for (size_t i = 0; i < n_lang; i++) slot[i] = from_cfg ? entry_str(json_array_get(ast, i)) : nllb_codes[i];
    slot[n_lang] = "<mask>";
    if (json_is_object(atd)) { /* ids given by the file: they must fill the slots */
        const char **by_id = calloc(n_extra, sizeof *by_id);
        mt_tokenizer *names = NULL; /* slot strings -> slot index, one pass over the entries */
        size_t placed = 0;
        if (!by_id || (rc = mt_tok_new(&names, MT_TOK_SPM))) {
            free(by_id);
            if (!rc) rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
            goto done;
        }
        for (size_t i = 0; i < n_extra && !rc; i++)
            rc = mt_tok_add_piece(names, slot[i], strlen(slot[i]), 0.0f, MT_PIECE_CONTROL, name);
        if (!rc) rc = mt_tok_build_map(names, name);
        const char *key;
        json_t *v;
        json_object_foreach((json_t *)atd, key, v) {
            if (rc) break;
            const char *str = entry_str(v);
            const int i = str ? mt_tok_lookup(names, str, strlen(str)) : -1;
            if (i < 0) continue; /* <s>, <pad>, </s>, <unk> or another token */
            char *end;
            const long id = strtol(key, &end, 10);
            if (*end || id < (long)first || id >= (long)(first + n_extra) || by_id[id - (long)first]) {
                rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: added_tokens_decoder gives '%s' id %s, outside the %zu ids after "
                               "the pieces (%zu..%zu) or taken twice", name, str, key, n_extra, first, first + n_extra - 1);
                break;
            }
            by_id[id - (long)first] = slot[i];
            placed++;
        }
        mt_tok_free(names);
        if (!rc && placed == n_extra) memcpy(slot, by_id, n_extra * sizeof *slot);
        else if (!rc && placed)
            rc = mt_seterr(MT_ERR_UNSUPPORTED, "%s: added_tokens_decoder gives ids to %zu of the %zu language codes and "
                           "<mask>", name, placed, n_extra);
        free(by_id);
        if (rc) goto done;
    }
    if ((rc = mt_tok_new(&f, t->kind))) goto done;
    static const char *const head[4] = {"<s>", "<pad>", "</s>", "<unk>"};
    for (int i = 0; i < 4 && !rc; i++)
        rc = mt_tok_add_piece(f, head[i], strlen(head[i]), 0.0f, i == 3 ? MT_PIECE_UNKNOWN : MT_PIECE_CONTROL, name);
    for (size_t i = 3; i < n_spm && !rc; i++)
        rc = mt_tok_add_piece(f, t->pool + t->pieces[i].off, t->pieces[i].len, t->pieces[i].score, t->pieces[i].type, name);
    for (size_t i = 0; i < n_extra && !rc; i++) rc = mt_tok_add_piece(f, slot[i], strlen(slot[i]), 0.0f, MT_PIECE_CONTROL, name);
    if (rc || (rc = mt_tok_build_map(f, name))) goto done;
    f->bos = 0;
    f->eos = 2;
    f->unk = 3;
    f->byte_fallback = t->byte_fallback;
    mt_tok_find_byte_pieces(f, 0);
    f->prepend = t->prepend;
    f->escape_ws = t->escape_ws;
    f->remove_extra_ws = t->remove_extra_ws;
    f->has_unused = t->has_unused;
    f->spm_fuse_unk = t->spm_fuse_unk;
    f->cm_units = t->cm_units;
    f->cm_n_units = t->cm_n_units;
    f->cm_norm = t->cm_norm;
    f->cm_norm_len = t->cm_norm_len;
    t->cm_units = NULL;
    t->cm_norm = NULL;
    f->n_lang = (int)n_lang;
    f->lang_first = (int)first;
    {
        int32_t *sp = malloc((4 + n_extra) * sizeof *sp);
        if (!sp) {
            rc = mt_seterr(MT_ERR_NOMEM, "%s: out of memory", name);
            goto done;
        }
        for (int i = 0; i < 4; i++) sp[i] = i;
        for (size_t i = 0; i < n_extra; i++) sp[4 + i] = (int32_t)(first + i);
        rc = mt_tok_set_specials(f, sp, 4 + n_extra);
        free(sp);
        if (rc) goto done;
    }
    f->split_specials = 1;
    mt_tok_finalize(f);
    if (f->kind == MT_TOK_UNIGRAM) mt_tok_unigram_scores(f);
    mt_tok_free(t);
    *tp = f;
    f = NULL;
done:
    mt_tok_free(f);
    free(slot);
    json_decref(cfg);
    return rc;
}

int mt_tok_lang_codes(const mt_tokenizer *t) { return t ? t->n_lang : 0; }

int mt_tok_find(const mt_tokenizer *t, const char *piece) {
    return t && piece ? mt_tok_lookup(t, piece, strlen(piece)) : -1;
}

int mt_tok_lang_id(const mt_tokenizer *t, const char *code) {
    if (!t || !code || !t->n_lang) return -1;
    const int id = mt_tok_find(t, code);
    if (id < t->lang_first || id > t->lang_first + t->n_lang || !strcmp(code, "<mask>")) return -1;
    return id;
}

int mt_tok_parse_fairseq(mt_tokenizer **out, const void *spm, size_t spm_len, const char *cfg_text, size_t cfg_len,
                         const char *name) {
    if (!out) return mt_seterr(MT_ERR_ARG, "mt_tok_parse_fairseq: NULL argument");
    if (!name) name = "sentencepiece.bpe.model";
    int rc = mt_tok_parse_spm(out, spm, spm_len, name);
    if (rc) return rc;
    if ((rc = mt_tok_apply_fairseq(out, cfg_text, cfg_len, name))) {
        mt_tok_free(*out);
        *out = NULL;
    }
    return rc;
}
