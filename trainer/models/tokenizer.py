"""A CLIP BPE vocabulary built here, from a fixed word list, so the tiny models need no download.

    write_tiny_tokenizer(folder)   # vocab.json + merges.txt that CLIPTokenizer.from_pretrained reads

The learner is plain byte-pair encoding over word counts (the algorithm CLIP's own vocabulary came from),
written out because the `tokenizers` trainer's output may change between its versions and the tiny
models must be the same on every machine.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter
from functools import lru_cache
from pathlib import Path

# Words that prompts and captions of the example dataset and typical LoRA previews use. Order matters
# only for ties, which are broken alphabetically, so the vocabulary is stable.
CORPUS = """
a an the of and with in on at by for from to under over behind beside near into
photo picture painting drawing illustration render sketch portrait landscape style art artwork
red orange yellow green blue purple pink white black gray grey brown gold silver teal cyan magenta
bright dark light pale deep vivid muted pastel neon warm cold soft sharp bold thick thin flat
circle circles square squares triangle triangles star stars stripe stripes dot dots line lines shape shapes
pattern patterns tile tiles mosaic glass stained window frame border outline outlines
cat cats dog dogs bird birds fish horse tree trees flower flowers house houses mountain mountains
sky sun moon cloud clouds river lake sea ocean forest field city street road car boat
man woman person people girl boy face eyes hair hand smile
sitting standing walking running flying floating glowing shining
big small large tiny little tall short round curved straight
one two three four five six seven eight nine ten many several
background foreground center left right top bottom corner middle
detailed simple clean geometric abstract colorful symmetric centered composition
high quality best masterpiece highly realistic cinematic lighting sunset night day morning evening
lsstyle sks ohwx trigger token
""".split()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte-to-printable-character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in codes), strict=True))


def _learn_merges(words: list[str], num_merges: int) -> list[tuple[str, str]]:
    # Pair counts are kept up to date for the words a merge touches, and the best pair comes off a heap whose
    # stale entries are skipped, instead of recounting and rescanning every pair each round: the same merges
    # and tie-break, in a fraction of the time (the recount took most of a second of `lora-studio doctor`).
    byte_map = _bytes_to_unicode()
    counts = Counter(words)
    splits = {}
    for word in counts:
        symbols = [byte_map[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        splits[word] = symbols
    pairs: Counter[tuple[str, str]] = Counter()
    where: dict[tuple[str, str], set[str]] = {}
    for word, symbols in splits.items():
        _count_pairs(pairs, where, word, symbols, counts[word])
    heap = [(-n, pair) for pair, n in pairs.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges and heap:
        negative, best = heapq.heappop(heap)
        if pairs.get(best) != -negative:
            continue  # an old count: the pair's current one is elsewhere on the heap (or it is gone)
        merges.append(best)
        joined = best[0] + best[1]
        touched: set[tuple[str, str]] = set()
        for word in sorted(where.get(best, ())):
            symbols = splits[word]
            _count_pairs(pairs, where, word, symbols, -counts[word])
            out, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(symbols[i])
                    i += 1
            splits[word] = out
            _count_pairs(pairs, where, word, out, counts[word])
            touched.update(zip(symbols, symbols[1:], strict=False), zip(out, out[1:], strict=False))
        for pair in touched:
            if pair in pairs:
                heapq.heappush(heap, (-pairs[pair], pair))
    return merges


def _count_pairs(pairs: Counter, where: dict, word: str, symbols: list[str], weight: int) -> None:
    """Add (or with a negative weight remove) one word's adjacent pairs to the running counts."""
    for pair in zip(symbols, symbols[1:], strict=False):
        pairs[pair] += weight
        if weight > 0:
            where.setdefault(pair, set()).add(word)
        elif pairs[pair] <= 0:
            del pairs[pair]
            where.pop(pair, None)
        else:
            where[pair].discard(word)


@lru_cache(maxsize=1)
def tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) in CLIP's layout: bytes, bytes+'</w>', merges, then the two special tokens."""
    byte_chars = list(_bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars]
    merges = _learn_merges(CORPUS, num_merges=2000)
    tokens += [a + b for a, b in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges


def write_tiny_tokenizer(folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = tiny_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2"] + [f"{a} {b}" for a, b in merges]
    (folder / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
               "pad_token": "<|endoftext|>"}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    config = dict(special, model_max_length=77, tokenizer_class="CLIPTokenizer", do_lower_case=True)
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder
