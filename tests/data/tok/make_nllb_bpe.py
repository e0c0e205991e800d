#!/usr/bin/env python3
"""NLLB-style sentencepiece **BPE** tokenizer fixture (sentencepiece.bpe.model),
made with sentencepiece's own trainer, so that tests can check moetool's NLLB
tokenizer against transformers' NllbTokenizer (tests/cli_tokenize_nllb.sh).

    /usr/bin/python3 tests/data/tok/make_nllb_bpe.py      # (re)writes the fixture

Writes tests/data/tok/nllb_bpe.model: BPE, 600 pieces, <unk> 0, <s> 1, </s> 2
(sentencepiece's defaults, as NLLB's model has them), no byte fallback,
trained on the bundled KJV train.txt with make_unigram.py's normalization rule
table (nmt_nfkc restricted to a few blocks: a real precompiled charsmap, but a
small one).
"""
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
TRAIN = os.path.join(ROOT, "models", "kjv-mixtral-15m", "data", "train.txt")
sys.path.insert(0, HERE)
from make_unigram import rules_tsv  # noqa: E402


def main():
    import sentencepiece as spm
    out = os.path.join(HERE, "nllb_bpe.model")
    with tempfile.TemporaryDirectory() as d:
        tsv = os.path.join(d, "rules.tsv")
        rules_tsv(tsv)
        spm.SentencePieceTrainer.train(input=TRAIN, model_prefix=os.path.join(d, "bpe"), vocab_size=600,
                                       model_type="bpe", normalization_rule_tsv=tsv, character_coverage=0.9995,
                                       input_sentence_size=20000, shuffle_input_sentence=True,
                                       unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
        with open(os.path.join(d, "bpe.model"), "rb") as f, open(out, "wb") as g:
            g.write(f.read())
    sp = spm.SentencePieceProcessor(model_file=out)
    print("%s: %d pieces, %d bytes" % (out, sp.get_piece_size(), os.path.getsize(out)))


if __name__ == "__main__":
    main()
