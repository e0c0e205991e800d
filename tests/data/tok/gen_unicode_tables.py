#!/usr/bin/env python3
"""Writes lib/io/tokenizer_unicode.h: code point ranges of the Unicode
categories that the GPT-2 / Llama-3 pre-tokenizer regexes use (\\p{L}: Lu Ll
Lt Lm Lo; \\p{N}: Nd Nl No), from Python's unicodedata.

    python3 tests/data/tok/gen_unicode_tables.py > lib/io/tokenizer_unicode.h
"""
import sys
import unicodedata


def ranges(pred):
    out, start = [], None
    for cp in range(0x110000):
        ok = pred(cp)
        if ok and start is None:
            start = cp
        elif not ok and start is not None:
            out.append((start, cp - 1))
            start = None
    if start is not None:
        out.append((start, 0x10FFFF))
    return out


def emit(name, rs):
    print(f"static const uint32_t {name}[][2] = {{ /* {len(rs)} ranges */")
    line = "   "
    for a, b in rs:
        item = f" {{0x{a:X},0x{b:X}}},"
        if len(line) + len(item) > 100:
            print(line)
            line = "   "
        line += item
    print(line)
    print("};")


cat = unicodedata.category
print(f"""/* tokenizer_unicode.h — code point ranges of \\p{{L}} and \\p{{N}} for the
 * byte-level BPE pre-tokenizer, generated from Unicode {unicodedata.unidata_version}
 * by tests/data/tok/gen_unicode_tables.py. Do not edit. */
#ifndef MT_TOKENIZER_UNICODE_H
#define MT_TOKENIZER_UNICODE_H
#include <stdint.h>
""")
emit("mt_uni_letter", ranges(lambda c: cat(chr(c)) in ("Lu", "Ll", "Lt", "Lm", "Lo")))
emit("mt_uni_number", ranges(lambda c: cat(chr(c)) in ("Nd", "Nl", "No")))
print("\n#endif")
