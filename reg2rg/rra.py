"""The Reg2RG prompt and the region-report alignment (RRA) target, built and parsed in one place.

Target form, per region in the order given: "The region {i} is {area}: {region text} " (i is 1-based).
The prompt, its special tokens and the token ids/labels of one example are built here too (no torch at
import; `pad_examples` imports it when called).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from reg2rg.constants import REGIONS

RRA_PREFIX = "The region {index} is {area}: "
_AREAS = "|".join(sorted((re.escape(r) for r in REGIONS), key=len, reverse=True))
# A prefix names an area; an unknown area word is still parsed (recognition then counts it wrong).
_PREFIX_RE = re.compile(r"The region (\d+) is ([A-Za-z][A-Za-z ]*?)\s*:\s*", re.IGNORECASE)


@dataclass(frozen=True)
class RegionText:
    index: int  # 1-based region index as written in the prompt
    area: str  # the area name the text gives for that index (lower-cased)
    text: str  # the region report without its prefix


def build_rra_target(items: list[tuple[int, str, str]]) -> str:
    """Join (index, area, text) triples into one RRA target string, in the order given."""
    return "".join(RRA_PREFIX.format(index=i, area=a) + t.strip() + " " for i, a, t in items)


def parse_rra(text: str) -> list[RegionText]:
    """Split an RRA-form report into its regions; text before the first prefix is ignored.

    Returns [] for a plain report with no prefix.
    """
    matches = list(_PREFIX_RE.finditer(text))
    out = []
    for m, nxt in zip(matches, matches[1:] + [None]):
        end = nxt.start() if nxt is not None else len(text)
        out.append(RegionText(int(m.group(1)), m.group(2).strip().lower(), text[m.end():end].strip()))
    return out


def strip_rra(text: str) -> str:
    """The report with every "The region N is X: " prefix removed (text otherwise unchanged)."""
    parts = parse_rra(text)
    if not parts:
        return text.strip()
    return " ".join(p.text for p in parts if p.text)


# ---------------------------------------------------------------------------------------------------------
# The prompt, its special tokens, and training/inference examples.
#
# Prompt (docs/method.md, "Prompt"):
# "The global information is provided as the context: <image>[image tokens]</image>. " then per region i
# (1-based) "The region {i} is <region>[texture tokens][geometry token]</region>. ", then the instruction.
# Every visual token is one placeholder token in the text; the model writes the visual feature into the
# embedding at that position.

IMAGE_START, IMAGE_END = "<image>", "</image>"
REGION_START, REGION_END = "<region>", "</region>"
IMAGE_TOKEN = "<image_token>"  # one global (whole-volume) visual token
TEXTURE_TOKEN = "<texture_token>"  # one region texture token
GEOMETRY_TOKEN = "<geometry_token>"  # the region geometry (mask) token
DELIMITER_TOKENS: tuple[str, ...] = (IMAGE_START, IMAGE_END, REGION_START, REGION_END)
PLACEHOLDER_TOKENS: tuple[str, ...] = (IMAGE_TOKEN, TEXTURE_TOKEN, GEOMETRY_TOKEN)
# The one list of tokens the tokenizer must hold as special tokens, in this order.
SPECIAL_TOKENS: tuple[str, ...] = DELIMITER_TOKENS + PLACEHOLDER_TOKENS

GLOBAL_CONTEXT = "The global information is provided as the context: "
REGION_INTRO = "The region {index} is "
INSTRUCTION = (
    "Given the provided global and regional information from this CT scan, please generate a comprehensive "
    "medical report for each region. First, identify the anatomical area corresponding to each region, then "
    "provide detailed information about these anatomical structures and any abnormalities that are essential. "
    "You can refer to the global information as the context and take it as a supplement when generating each "
    "region report."
)


@dataclass(frozen=True)
class PromptLayout:
    """How many placeholders each prompt segment holds; `Reg2RGConfig.prompt_layout` derives it."""

    num_image_tokens: int = 32
    num_texture_tokens: int = 32  # 0: texture ablated
    use_geometry: bool = True
    use_global: bool = True
    use_rra: bool = True

    @property
    def tokens_per_region(self) -> int:
        return self.num_texture_tokens + int(self.use_geometry)


def _layout(config) -> PromptLayout:
    if config is None:
        return PromptLayout()
    if isinstance(config, PromptLayout):
        return config
    return config.prompt_layout


def build_prompt(num_regions: int, config=None) -> str:
    """The prompt text for `num_regions` regions, placeholders written out (config: Reg2RGConfig or PromptLayout)."""
    lay = _layout(config)
    parts = []
    if lay.use_global:
        parts.append(GLOBAL_CONTEXT + IMAGE_START + IMAGE_TOKEN * lay.num_image_tokens + IMAGE_END + ". ")
    region = REGION_START + TEXTURE_TOKEN * lay.num_texture_tokens + GEOMETRY_TOKEN * int(lay.use_geometry) + REGION_END
    # Global only (no region tokens): no region segments; the target is the region texts in their given order.
    for i in range(1, num_regions + 1 if lay.tokens_per_region else 1):
        parts.append(REGION_INTRO.format(index=i) + region + ". ")
    parts.append(INSTRUCTION)
    return "".join(parts)


def build_target(items: list[tuple[int, str, str]], config=None) -> str:
    """The target for (index, area, text) triples in prompt order: RRA form, or the bare texts if RRA is off."""
    if _layout(config).use_rra:
        return build_rra_target(items).strip()
    return " ".join(t.strip() for _, _, t in items if t.strip())


@dataclass
class Example:
    input_ids: list[int]  # bos + prompt (+ target + eos when built with a target)
    labels: list[int]  # -100 over bos and the prompt; the target ids and eos after it
    order: list[int]  # order[k] = index into region_items of prompt region k + 1
    areas: list[str]  # area names in prompt order
    prompt_length: int  # number of leading positions that are prompt (bos included)
    target: str  # the target text ("" without a target)


def _permutation(n: int, rng) -> list[int]:
    if rng is None:
        return list(range(n))
    if hasattr(rng, "permutation"):  # numpy Generator / RandomState
        return [int(i) for i in rng.permutation(n)]
    order = list(range(n))
    rng.shuffle(order)  # random.Random
    return order


def build_example(tokenizer, region_items, config=None, shuffle_rng=None, *, with_target: bool = True,
                  max_length: int | None = None) -> Example:
    """Token ids and labels for one scan.

    region_items: (area name, region text) pairs, or a mapping area -> text, for the regions the scan keeps
    (a region with no text or an empty mask is left out by the caller). With `shuffle_rng` (random.Random or a
    numpy Generator) the regions are put in a random order, a new one at each call (training); without it the
    given order is kept (evaluation). The caller must feed the region crops and masks in `example.order`.
    with_target=False builds the prompt alone (generation).
    """
    items = list(region_items.items()) if hasattr(region_items, "items") else [tuple(x) for x in region_items]
    lay = _layout(config)
    if max_length is None:
        max_length = getattr(config, "max_seq_len", None)
    # Without region tokens nothing in the prompt tells a region order: keep the given (fixed) one.
    order = _permutation(len(items), shuffle_rng if lay.tokens_per_region else None)
    areas = [str(items[k][0]).strip().lower() for k in order]
    prompt = build_prompt(len(items), lay)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    _check_placeholders(tokenizer, prompt_ids, len(items), lay)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    input_ids = bos + list(prompt_ids)
    labels = [-100] * len(input_ids)
    target = ""
    if with_target:
        target = build_target([(i + 1, areas[i], str(items[k][1] or "")) for i, k in enumerate(order)], lay)
        full = tokenizer(prompt + " " + target, add_special_tokens=False)["input_ids"]
        if list(full[: len(prompt_ids)]) != list(prompt_ids):
            raise ValueError("the tokenizer does not split prompt and target at the prompt's end")
        target_ids = list(full[len(prompt_ids):]) + [tokenizer.eos_token_id]
        if max_length is not None and len(input_ids) + len(target_ids) > max_length:
            room = max_length - len(input_ids)
            if room <= 0:
                raise ValueError(f"the prompt alone is {len(input_ids)} tokens, over max_length {max_length}")
            logging.getLogger(__name__).warning(
                "target cut from %d to %d tokens to fit max_length %d", len(target_ids), room, max_length)
            target_ids = target_ids[:room]
        input_ids += target_ids
        labels += target_ids
    return Example(input_ids, labels, order, areas, len(bos) + len(prompt_ids), target)


def _check_placeholders(tokenizer, ids, num_regions: int, lay: PromptLayout) -> None:
    expected = {
        IMAGE_TOKEN: lay.num_image_tokens if lay.use_global else 0,
        TEXTURE_TOKEN: lay.num_texture_tokens * num_regions,
        GEOMETRY_TOKEN: int(lay.use_geometry) * num_regions,
    }
    for token, count in expected.items():
        tid = tokenizer.convert_tokens_to_ids(token)
        found = sum(1 for i in ids if i == tid)
        if found != count:
            raise ValueError(f"prompt holds {found} {token} tokens, expected {count}: is {token} a special token "
                             "of this tokenizer (reg2rg.model.tokenizer.load_tokenizer adds them)?")


def pad_examples(examples, pad_token_id: int, padding_side: str = "right") -> dict:
    """Pad examples (Example or dicts with input_ids/labels) to the longest one: input_ids, attention_mask,
    labels as int64 tensors [B, L]. Right padding for training, left padding for batched generation."""
    import torch

    rows = [(list(e.input_ids), list(e.labels)) if isinstance(e, Example) else (list(e["input_ids"]), list(e["labels"]))
            for e in examples]
    length = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for b, (ids, lab) in enumerate(rows):
        sl = slice(0, len(ids)) if padding_side == "right" else slice(length - len(ids), length)
        input_ids[b, sl] = torch.tensor(ids, dtype=torch.long)
        labels[b, sl] = torch.tensor(lab, dtype=torch.long)
        attention_mask[b, sl] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}
