"""CLIP's caption tokenizer built straight on `tokenizers`, so the dataset doctor counts tokens without transformers.

    tok = caption_tokenizer(vocab, merges)          # or caption_tokenizer_from_folder("model/tokenizer")
    ids = tok("a red circle", truncation=False)["input_ids"]   # [bos, ..., eos], as CLIPTokenizer gives

Importing transformers costs the doctor most of a second; this builds the same `tokenizers` pipeline as
transformers' `CLIPTokenizer` (models/clip/tokenization_clip.py, transformers 5: NFC + whitespace + lowercase,
CLIP's split regex, byte-level BPE with `</w>`, bos/eos around the ids) and offers only what the doctor's
length check calls: `__call__`, `decode` and `model_max_length`. tests/test_cli_imports.py checks the ids
against CLIPTokenizer's.
"""

from __future__ import annotations

import json
from pathlib import Path

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


class CaptionTokenizer:
    """The subset of CLIPTokenizer the doctor uses, over a `tokenizers.Tokenizer`."""

    def __init__(self, backend, model_max_length: int = 77):
        self.backend = backend
        self.model_max_length = model_max_length

    def __call__(self, text: str, truncation: bool = False, verbose: bool = False) -> dict[str, list[int]]:
        ids = self.backend.encode(text).ids
        if truncation:
            ids = ids[:self.model_max_length]
        return {"input_ids": ids}

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        text = self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return text.replace("</w>", " ").strip()


def caption_tokenizer(vocab: dict[str, int], merges: list[tuple[str, str]],
                      model_max_length: int = 77, unk: str = EOS) -> CaptionTokenizer:
    """The CLIP tokenizer of `vocab` and `merges`, assembled as transformers' CLIPTokenizer assembles it."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    backend = Tokenizer(BPE(vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="",
                            end_of_word_suffix="</w>", fuse_unk=False, unk_token=unk))
    backend.normalizer = normalizers.Sequence(
        [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_SPLIT), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in dict.fromkeys((BOS, EOS, unk))])
    backend.post_processor = processors.RobertaProcessing((EOS, vocab[EOS]), (BOS, vocab[BOS]), False, False)
    return CaptionTokenizer(backend, model_max_length)


def caption_tokenizer_from_folder(folder: str | Path) -> CaptionTokenizer | None:
    """From a CLIP tokenizer folder's vocab.json + merges.txt (+ tokenizer_config.json); None if it is not one.

    None means the caller should ask transformers (a folder with only tokenizer.json, another tokenizer class).
    """
    folder = Path(folder)
    vocab_file, merges_file, config_file = (folder / n for n in ("vocab.json", "merges.txt", "tokenizer_config.json"))
    if not (vocab_file.is_file() and merges_file.is_file()):
        return None
    config = json.loads(config_file.read_text(encoding="utf-8")) if config_file.is_file() else {}
    if config.get("tokenizer_class", "CLIPTokenizer") not in ("CLIPTokenizer", "CLIPTokenizerFast"):
        return None
    vocab = json.loads(vocab_file.read_text(encoding="utf-8"))
    unk = _token_text(config.get("unk_token", EOS))
    if BOS not in vocab or EOS not in vocab or unk not in vocab:
        return None
    merges = []
    for line in merges_file.read_text(encoding="utf-8").splitlines():
        if line.startswith("#version") or not line.strip():
            continue
        first, _, second = line.partition(" ")
        merges.append((first, second))
    # transformers' own default when the config names no limit (its VERY_LARGE_INTEGER): no length check
    limit = int(config.get("model_max_length", int(1e30)))
    return caption_tokenizer(vocab, merges, limit, unk)


def _token_text(token) -> str:
    """tokenizer_config.json writes a special token as a string or as an AddedToken dict."""
    return token.get("content", EOS) if isinstance(token, dict) else str(token)
