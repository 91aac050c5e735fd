"""The byte-level BPE tokenizer stored in a GGUF file (``tokenizer.ggml.model = "gpt2"``).

    text ──pre-tokenize──► pieces ──bytes→symbols──► BPE merges by rank ──► token ids

1. Pre-tokenization splits the text with regular expressions before any merge. For
   ``tokenizer.ggml.pre = "smollm"`` (also starcoder, refact, command-r, codeshell ...)
   llama.cpp applies two, one after the other:
       \\p{N}                                   every digit is its own piece
       's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)   GPT-2's split
2. Each piece's UTF-8 bytes become printable symbols through GPT-2's byte→unicode table.
3. Within a piece, the adjacent pair with the lowest merge rank (its line number in
   ``tokenizer.ggml.merges``) is merged, repeatedly, until no listed pair remains.
A byte whose symbol is missing from the vocabulary (SmolLM2 lacks 21 of the 256, e.g.
0x13, 0xF1) is dropped, and its neighbours are not merged across it.
Special tokens (``<|im_start|>`` ...) are not parsed out of plain text, as llama.cpp's
``llama_tokenize(..., parse_special=false)``; BOS is added only if the file's
``tokenizer.ggml.add_bos_token`` says so (SmolLM2's says no).

The BPE itself is the ``tokenizers`` library's; this module only builds it from the file.
Ref: llama.cpp src/llama-vocab.cpp (``llm_tokenizer_bpe``, LLAMA_VOCAB_PRE_TYPE_SMOLLM);
Radford et al. 2019 (GPT-2, byte-level BPE); Sennrich et al. 2016 (BPE).
"""

from __future__ import annotations

from typing import Any, Sequence

__all__ = ["Tokenizer", "PRE_TOKENIZER_REGEXES"]

# tokenizer.ggml.pre -> the regexes llama.cpp applies in turn (llama-vocab.cpp)
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PRE_TOKENIZER_REGEXES = {
    "gpt2": (),
    "smollm": (r"\p{N}",),
    "starcoder": (r"\p{N}",),
    "refact": (r"\p{N}",),
    "codeshell": (r"\p{N}",),
}


class Tokenizer:
    """Byte-level BPE built from a GGUF file's ``tokenizer.ggml.*`` metadata.

    >>> from refquant.model.data import smollm2_path
    >>> from refquant.model.loader import load_weights
    >>> tok = Tokenizer.from_metadata(load_weights(smollm2_path())[0])   # SmolLM2's metadata
    >>> tok.encode("Hello world"), tok.decode([19556, 905])
    ([19556, 905], 'Hello world')
    """

    def __init__(self, tokens: Sequence[str], merges: Sequence[str], pre: str = "gpt2",
                 bos_id: int | None = None, eos_id: int | None = None, add_bos: bool = False):
        from tokenizers import Regex, Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

        if pre not in PRE_TOKENIZER_REGEXES:
            raise ValueError(f"pre: unsupported pre-tokenizer {pre!r}; supported: {sorted(PRE_TOKENIZER_REGEXES)}")
        vocab = {token: i for i, token in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
        splits = [pre_tokenizers.Split(Regex(rx), behavior="isolated") for rx in PRE_TOKENIZER_REGEXES[pre]]
        # ByteLevel's own regex is GPT-2's split; after it, the byte -> symbol table
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        # A byte whose symbol is not in the vocabulary stays in llama.cpp's symbol list as
        # a barrier that no merge crosses, and is dropped at output. ``tokenizers`` drops
        # it before merging, letting its neighbours merge. Cutting pieces at such symbols
        # (and removing them) restores llama.cpp's behaviour.
        missing = sorted(set(pre_tokenizers.ByteLevel.alphabet()) - set(vocab))
        barriers = [pre_tokenizers.Split(Regex("[" + "".join(missing) + "]"), behavior="removed")] if missing else []
        self._bpe = HFTokenizer(bpe)
        self._bpe.pre_tokenizer = pre_tokenizers.Sequence([*splits, byte_level, *barriers])
        self._bpe.decoder = decoders.ByteLevel()
        self.tokens = list(tokens)
        self.bos_id, self.eos_id, self.add_bos = bos_id, eos_id, add_bos

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> "Tokenizer":
        model = metadata.get("tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"metadata: tokenizer.ggml.model is {model!r}; only byte-level BPE ('gpt2') is supported")
        for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges"):  # a file's header, checked
            value = metadata.get(key)
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"metadata: {key} must be an array of strings, got "
                                 f"{'nothing' if value is None else type(value).__name__}")
        bad = next((m for m in metadata["tokenizer.ggml.merges"] if len(m.split(" ", 1)) != 2), None)
        if bad is not None:
            raise ValueError(f"metadata: tokenizer.ggml.merges: expected 'left right' pairs, got {bad!r}")
        n_tokens = len(metadata["tokenizer.ggml.tokens"])
        for key in ("tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id"):
            i = metadata.get(key)
            if i is not None and (isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_tokens):
                raise ValueError(f"metadata: {key} = {i!r} is not a token id in 0..{n_tokens - 1}")
        return cls(
            tokens=metadata["tokenizer.ggml.tokens"],
            merges=metadata["tokenizer.ggml.merges"],
            pre=metadata.get("tokenizer.ggml.pre", "gpt2"),
            bos_id=metadata.get("tokenizer.ggml.bos_token_id"),
            eos_id=metadata.get("tokenizer.ggml.eos_token_id"),
            add_bos=bool(metadata.get("tokenizer.ggml.add_bos_token", False)),
        )

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids of ``text``; BOS first when ``add_bos`` (default: the file's setting)."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected str, got {type(text).__name__}")
        ids = self._bpe.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id, *ids]
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """The text of token ids (bytes joined, then UTF-8 decoded, invalid bytes replaced)."""
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids: token id(s) {bad[:5]} outside 0..{self.vocab_size - 1}")
        return self._bpe.decode(ids, skip_special_tokens=False)
