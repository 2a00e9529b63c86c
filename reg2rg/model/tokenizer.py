"""Tokenizers: a tiny byte-level BPE trained on the training reports, or a pretrained one (Llama-2's) from a
local folder; both come back through `load_tokenizer` with the prompt's special tokens added.

The special tokens are added after the text vocabulary, so their ids lie past the LLM's embedding table
(ids >= text_vocab_size); the model embeds them itself and never lets the LLM see or predict them.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from reg2rg.errors import ConfigError
from reg2rg.rra import SPECIAL_TOKENS

log = logging.getLogger(__name__)

PAD, BOS, EOS = "<pad>", "<s>", "</s>"


def _add_special_tokens(tokenizer) -> None:
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        tokenizer.add_special_tokens({"extra_special_tokens": missing}, replace_extra_special_tokens=False)


def train_tiny_tokenizer(texts: Iterable[str], vocab_size: int, out_dir):
    """Train a byte-level BPE on `texts` (the training reports), save it with save_pretrained in `out_dir`.

    The text vocabulary is `vocab_size` tokens (pad, bos, eos first); the prompt's special tokens follow it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from reg2rg.constants import REGIONS
    from reg2rg.rra import GLOBAL_CONTEXT, INSTRUCTION, REGION_INTRO, RRA_PREFIX

    # Every "The region N is" is one token of its own: the prompt's region N segment and the target's region N
    # prefix then start with the same token, which no report text holds (a numeral such as the "7" of "7 mm"
    # is another token). The BPE learns the rest of the text vocabulary.
    phrases = [REGION_INTRO.format(index=i).strip() for i in range(1, len(REGIONS) + 1)]
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(phrases), special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # The prompt's fixed sentences and the RRA prefixes are part of every example: weigh them like frequent
    # text so that they take few tokens.
    fixed = [GLOBAL_CONTEXT, INSTRUCTION] * 10
    for i in range(1, len(REGIONS) + 1):
        fixed += [REGION_INTRO.format(index=i)] * 10 + [RRA_PREFIX.format(index=i, area=a) for a in REGIONS]
    core.train_from_iterator(list(texts) + fixed, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS, pad_token=PAD)
    tokenizer.add_tokens(phrases)
    _add_special_tokens(tokenizer)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out_dir))
    log.info("trained a byte-level BPE of %d text tokens (+%d special) into %s",
             text_vocab_size(tokenizer), len(SPECIAL_TOKENS), out_dir)
    return tokenizer


def load_tokenizer(path):
    """A tokenizer saved with save_pretrained (tiny BPE, Llama-2, GPT-2), with the special tokens added and a pad
    token set (the unk token, else eos, when the tokenizer has none, as Llama-2's)."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"{path}: tokenizer folder not found")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot load a tokenizer: {err}") from err
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"{path}: the tokenizer has no eos token")
    if tokenizer.bos_token_id is None:
        tokenizer.bos_token = tokenizer.eos_token  # GPT-2 style: <|endoftext|> opens and closes
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    _add_special_tokens(tokenizer)
    return tokenizer


def special_token_ids(tokenizer) -> dict[str, int]:
    """Id of each of SPECIAL_TOKENS; ConfigError if the tokenizer lacks one."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in SPECIAL_TOKENS if t not in vocab]
    if missing:
        raise ConfigError(f"tokenizer lacks the special tokens {', '.join(missing)}: load it with load_tokenizer")
    return {t: vocab[t] for t in SPECIAL_TOKENS}


def phrase_token_ids(tokenizer) -> list[int] | None:
    """Ids of the one-token phrases "The region 1 is" .. "The region 10 is" (the tiny tokenizer's), in index
    order; None when the tokenizer splits them (Llama-2's)."""
    from reg2rg.constants import REGIONS
    from reg2rg.rra import REGION_INTRO

    vocab = tokenizer.get_vocab()
    phrases = [REGION_INTRO.format(index=i).strip() for i in range(1, len(REGIONS) + 1)]
    return [vocab[p] for p in phrases] if all(p in vocab for p in phrases) else None


def text_vocab_size(tokenizer) -> int:
    """1 + the largest id that is not one of SPECIAL_TOKENS: the LLM's embedding table must cover this."""
    special = set(SPECIAL_TOKENS)
    return 1 + max(i for t, i in tokenizer.get_vocab().items() if t not in special)
