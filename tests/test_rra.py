"""The prompt, the RRA target and the examples built from them (real tokenizer, trained on the spot)."""
import random

import pytest

from reg2rg.constants import REGIONS
from reg2rg.rra import (
    GEOMETRY_TOKEN,
    GLOBAL_CONTEXT,
    IMAGE_END,
    IMAGE_START,
    IMAGE_TOKEN,
    INSTRUCTION,
    REGION_END,
    REGION_START,
    SPECIAL_TOKENS,
    TEXTURE_TOKEN,
    PromptLayout,
    build_example,
    build_prompt,
    build_rra_target,
    pad_examples,
    parse_rra,
    strip_rra,
)

TEXTS = {
    "lung": "A 6 mm nodule in the right upper lobe. No consolidation.",
    "heart": "Heart size is normal. No pericardial effusion.",
    "pleura": "No pleural effusion.",
    "bone": "Degenerative changes of the thoracic spine.",
    "trachea and bronchie": "Trachea and main bronchi are patent.",
}
LAYOUT = PromptLayout(num_image_tokens=4, num_texture_tokens=4)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from reg2rg.model.tokenizer import load_tokenizer, train_tiny_tokenizer

    out = tmp_path_factory.mktemp("tok")
    train_tiny_tokenizer(list(TEXTS.values()) * 5, 400, out)
    return load_tokenizer(out)


def test_rra_build_parse_strip_round_trip():
    items = [(1, "lung", "A nodule. "), (2, "trachea and bronchie", "Patent."), (3, "heart", "Normal.")]
    text = build_rra_target(items)
    assert text == "The region 1 is lung: A nodule. The region 2 is trachea and bronchie: Patent. The region 3 is heart: Normal. "
    assert [(p.index, p.area, p.text) for p in parse_rra(text)] == [(i, a, t.strip()) for i, a, t in items]
    assert strip_rra(text) == "A nodule. Patent. Normal."
    assert parse_rra("No prefix at all.") == [] and strip_rra(" No prefix at all. ") == "No prefix at all."


def test_prompt_text_and_placeholders():
    prompt = build_prompt(2, LAYOUT)
    region = REGION_START + TEXTURE_TOKEN * 4 + GEOMETRY_TOKEN + REGION_END
    assert prompt == (GLOBAL_CONTEXT + IMAGE_START + IMAGE_TOKEN * 4 + IMAGE_END + ". "
                      + f"The region 1 is {region}. The region 2 is {region}. " + INSTRUCTION)
    # Paper sizes: 32 image tokens, 33 tokens per region.
    paper = build_prompt(10)
    assert paper.count(IMAGE_TOKEN) == 32 and paper.count(TEXTURE_TOKEN) == 320 and paper.count(GEOMETRY_TOKEN) == 10
    assert len(SPECIAL_TOKENS) == len(set(SPECIAL_TOKENS)) == 7


@pytest.mark.parametrize("layout, absent", [
    (PromptLayout(4, 4, use_global=False), IMAGE_START),
    (PromptLayout(4, 0), TEXTURE_TOKEN),
    (PromptLayout(4, 4, use_geometry=False), GEOMETRY_TOKEN),
])
def test_prompt_ablations(layout, absent):
    prompt = build_prompt(3, layout)
    assert absent not in prompt
    assert prompt.count(REGION_START) == 3 and prompt.endswith(INSTRUCTION)


def test_example_labels_mask_prompt_and_round_trip(tokenizer):
    ex = build_example(tokenizer, list(TEXTS.items()), LAYOUT)
    assert ex.order == list(range(len(TEXTS))) and ex.areas == list(TEXTS)
    assert ex.input_ids[0] == tokenizer.bos_token_id and ex.input_ids[-1] == tokenizer.eos_token_id
    assert all(x == -100 for x in ex.labels[:ex.prompt_length])
    assert ex.labels[ex.prompt_length:] == ex.input_ids[ex.prompt_length:]
    # The prompt part decodes back to the prompt, the labelled part to the target.
    prompt_ids = ex.input_ids[1:ex.prompt_length]
    assert tokenizer.decode(prompt_ids) == build_prompt(len(TEXTS), LAYOUT)
    target = tokenizer.decode(ex.labels[ex.prompt_length:], skip_special_tokens=True)
    parsed = parse_rra(target)
    assert [(p.index, p.area, p.text) for p in parsed] == [(i + 1, a, t) for i, (a, t) in enumerate(TEXTS.items())]
    assert strip_rra(target) == " ".join(TEXTS.values())
    # The prompt alone (generation) is the same prefix.
    prompt_only = build_example(tokenizer, [(a, None) for a in TEXTS], LAYOUT, with_target=False)
    assert prompt_only.input_ids == ex.input_ids[:ex.prompt_length]
    assert all(x == -100 for x in prompt_only.labels)


def test_shuffle_keeps_index_area_pairing(tokenizer):
    rng = random.Random(0)
    items = list(TEXTS.items())
    orders = set()
    for _ in range(8):
        ex = build_example(tokenizer, items, LAYOUT, shuffle_rng=rng)
        orders.add(tuple(ex.order))
        assert sorted(ex.order) == list(range(len(items)))
        assert ex.areas == [items[k][0] for k in ex.order]
        parsed = parse_rra(tokenizer.decode(ex.labels[ex.prompt_length:], skip_special_tokens=True))
        # Region i of the prompt is region_items[order[i-1]]; the target names that area and gives its text.
        assert [(p.index, p.area, p.text) for p in parsed] == [(i + 1, items[k][0], items[k][1]) for i, k in enumerate(ex.order)]
    assert len(orders) > 1  # a new order at each step
    # Evaluation: no rng, fixed order.
    assert build_example(tokenizer, items, LAYOUT).order == list(range(len(items)))


def test_rra_off_target_has_no_prefix(tokenizer):
    lay = PromptLayout(4, 4, use_rra=False)
    ex = build_example(tokenizer, list(TEXTS.items()), lay)
    target = tokenizer.decode(ex.labels[ex.prompt_length:], skip_special_tokens=True).strip()
    assert parse_rra(target) == [] and target == " ".join(TEXTS.values())


def test_zero_regions_and_truncation(tokenizer):
    ex = build_example(tokenizer, [], LAYOUT, with_target=False)
    assert tokenizer.decode(ex.input_ids[1:]) == build_prompt(0, LAYOUT)
    full = build_example(tokenizer, list(TEXTS.items()), LAYOUT)
    cut = build_example(tokenizer, list(TEXTS.items()), LAYOUT, max_length=full.prompt_length + 5)
    assert len(cut.input_ids) == full.prompt_length + 5 and cut.input_ids == full.input_ids[:full.prompt_length + 5]
    with pytest.raises(ValueError, match="prompt alone"):
        build_example(tokenizer, list(TEXTS.items()), LAYOUT, max_length=10)


def test_placeholders_must_be_special_tokens():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.train_from_iterator(list(TEXTS.values()), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    plain = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    with pytest.raises(ValueError, match="special token"):
        build_example(plain, list(TEXTS.items()), LAYOUT)


def test_pad_examples(tokenizer):
    a = build_example(tokenizer, list(TEXTS.items())[:1], LAYOUT)
    b = build_example(tokenizer, list(TEXTS.items())[:3], LAYOUT)
    right = pad_examples([a, b], tokenizer.pad_token_id)
    n = len(a.input_ids)
    assert right["input_ids"].shape == (2, len(b.input_ids))
    assert right["attention_mask"][0].tolist() == [1] * n + [0] * (len(b.input_ids) - n)
    assert right["labels"][0, n:].eq(-100).all() and right["input_ids"][0, :n].tolist() == a.input_ids
    left = pad_examples([a, b], tokenizer.pad_token_id, padding_side="left")
    assert left["input_ids"][0, -n:].tolist() == a.input_ids and left["attention_mask"][0, :-n].eq(0).all()


def test_regions_constant_matches_prompt_areas():
    # The areas the target names are the region names of reg2rg.constants.
    assert "trachea and bronchie" in REGIONS
    parsed = parse_rra(build_rra_target([(1, REGIONS[-1], "x")]))
    assert parsed[0].area == REGIONS[-1]


def test_sentencepiece_style_llama_tokenizer(tmp_path):
    """The paper's path: a LlamaTokenizer (Metaspace, no pad token) saved and loaded like Llama-2's."""
    import json

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import LlamaTokenizer

    from reg2rg.model.tokenizer import load_tokenizer

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    corpus = list(TEXTS.values()) * 5 + [build_prompt(0, LAYOUT), "The region 1 2 3 4 5 6 7 8 9 10 is"]
    core.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=500, special_tokens=["<unk>", "<s>", "</s>"]))
    spec = json.loads(core.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in spec["merges"]]
    LlamaTokenizer(vocab=spec["vocab"], merges=merges).save_pretrained(tmp_path)
    tok = load_tokenizer(tmp_path)
    assert tok.pad_token == "<unk>" and tok.bos_token_id == 1 and tok.eos_token_id == 2
    items = list(TEXTS.items())
    ex = build_example(tok, items, LAYOUT, shuffle_rng=random.Random(1))
    parsed = parse_rra(tok.decode(ex.labels[ex.prompt_length:], skip_special_tokens=True))
    assert [(p.index, p.area, p.text) for p in parsed] == [(i + 1, items[k][0], items[k][1]) for i, k in enumerate(ex.order)]
    prompt_only = build_example(tok, [(a, None) for a, _ in items], LAYOUT, with_target=False)
    assert prompt_only.input_ids == ex.input_ids[:ex.prompt_length]  # the prompt does not depend on the order


# Malformed generations: what parse_rra makes of them (recognition then scores the parsed areas).
def test_parse_missing_colon_loses_that_region_only():
    text = "The region 1 is heart the heart is normal. The region 2 is lung: Clear lungs."
    parts = parse_rra(text)
    assert [(p.index, p.area, p.text) for p in parts] == [(2, "lung", "Clear lungs.")]
    assert strip_rra(text) == "Clear lungs."  # text before the first parsed prefix is not kept


def test_parse_missing_colon_without_punctuation_stops_at_the_next_prefix():
    parts = parse_rra("The region 1 is heart normal heart The region 2 is lung: Clear.")
    assert [(p.index, p.area) for p in parts] == [(2, "lung")]


def test_parse_repeated_region_keeps_both_in_order():
    parts = parse_rra("The region 1 is heart: Normal. The region 1 is lung: Clear.")
    assert [(p.index, p.area, p.text) for p in parts] == [(1, "heart", "Normal."), (1, "lung", "Clear.")]


def test_parse_unknown_area_is_kept_as_written():
    parts = parse_rra("The region 3 is Liver: Normal liver. The region 4 is left kidney : Normal.")
    assert [(p.index, p.area, p.text) for p in parts] == [(3, "liver", "Normal liver."), (4, "left kidney", "Normal.")]


def test_parse_empty_texts():
    assert parse_rra("") == []
    assert strip_rra("") == ""
    parts = parse_rra("The region 1 is heart: The region 2 is lung:")
    assert [(p.index, p.area, p.text) for p in parts] == [(1, "heart", ""), (2, "lung", "")]
    assert strip_rra("The region 1 is heart: The region 2 is lung:") == ""


def test_parse_area_names_with_spaces_and_case():
    parts = parse_rra("The region 10 is Trachea and Bronchie: Patent.")
    assert [(p.index, p.area) for p in parts] == [(10, "trachea and bronchie")]


def test_tiny_tokenizer_gives_every_region_phrase_one_token(tokenizer):
    """"The region 7 is" is one token, the same in the prompt and in the target, for every index alike, and not
    the numeral of report text ("7 mm"): the decoder can find region 7's segment by matching that token and
    count the regions it has written without mistaking a measurement for an index."""
    from reg2rg.constants import REGIONS
    from reg2rg.model.tokenizer import text_vocab_size

    phrase_tokens = set()
    for i in range(1, len(REGIONS) + 1):
        prompt = tokenizer.tokenize(f"The region {i} is {REGION_START}")
        target = tokenizer.tokenize(f"Normal. The region {i} is heart: a {i} mm nodule.")
        assert prompt[0] == f"The region {i} is" and prompt[0] in target, (prompt, target)
        assert target.count(prompt[0]) == 1  # the numeral in the text is another token
        phrase_tokens.add(prompt[0])
        text = f"The region {i} is heart: a {i} mm nodule. The region {i + 1} is lung: clear."
        assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text
    assert len(phrase_tokens) == len(REGIONS)
    assert text_vocab_size(tokenizer) == 400  # the phrases are part of the text vocabulary, not added past it
