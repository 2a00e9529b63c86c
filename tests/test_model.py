"""The Reg2RG model at tiny sizes: merging by position, gradients, loading paths, RadFM key mapping, ablations."""
import json

import pytest
import torch
from torch import nn

from reg2rg.constants import REGIONS
from reg2rg.errors import ConfigError, InputError
from reg2rg.model import (
    Reg2RGConfig,
    build_model,
    config_from_preset,
    load_preset,
    load_tokenizer,
    load_trained,
    save_trained,
    train_tiny_tokenizer,
)
from reg2rg.model.build import load_base_llm
from reg2rg.rra import (
    DELIMITER_TOKENS,
    GEOMETRY_TOKEN,
    IMAGE_TOKEN,
    REGION_START,
    TEXTURE_TOKEN,
    build_example,
    pad_examples,
    parse_rra,
)
from radfm_reference import write_radfm_files
from tiny_models import PAPER_SMALL, SMALL_LLAMA, save_tiny_llm

REPORTS = {
    "lung": "A 6 mm nodule in the right upper lobe.",
    "heart": "Heart size is normal.",
    "pleura": "No pleural effusion.",
    "bone": "Degenerative changes of the spine.",
}
SMALL = dict(
    input_size=[32, 32, 8],
    vit={"patch_size": [16, 16, 4]},
    mask_encoder={"patch_size": [16, 16, 8]},
    perceiver={"num_latents": 4},
)
def tiny_config(**overrides) -> Reg2RGConfig:
    return load_preset("tiny", **{**SMALL, "llm": {"sizes": SMALL_LLAMA}, **overrides})


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    train_tiny_tokenizer(list(REPORTS.values()) * 5, 320, out)
    return out


@pytest.fixture(scope="module")
def tok(tok_dir):
    return load_tokenizer(tok_dir)


def make_batch(tok, cfg, region_lists, *, with_target=True, padding_side="right", seed=0):
    gen = torch.Generator().manual_seed(seed)
    examples = [build_example(tok, [(a, REPORTS[a] if with_target else None) for a in regions], cfg,
                              with_target=with_target) for regions in region_lists]
    batch = pad_examples(examples, tok.pad_token_id, padding_side=padding_side)
    n_regions = sum(len(r) for r in region_lists)
    shape = tuple(cfg.input_size)
    vols = {
        "global_volume": torch.randn((len(region_lists), 1) + shape, generator=gen) if cfg.use_global else None,
        "region_crops": torch.randn((n_regions, 1) + shape, generator=gen) if cfg.use_texture else None,
        "region_masks": (torch.rand((n_regions, 1) + shape, generator=gen) > 0.5).float() if cfg.use_geometry else None,
        "region_counts": [len(r) for r in region_lists],
    }
    return batch, vols


# --------------------------------------------------------------------------------------------------------------
# Config and presets


def test_presets_come_from_the_working_directorys_config_not_the_package(tmp_path, monkeypatch):
    """The package never reads config/config.yaml from its own source tree: the default is the working
    directory's (where `snakemake` runs), and without one the error says what to do."""
    from pathlib import Path

    shipped = Path(__file__).resolve().parents[1] / "config" / "config.yaml"
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"config/config.yaml: no workflow config here \(run from the workflow"):
        load_preset("tiny")
    assert load_preset("tiny", shipped) == load_preset("tiny", str(shipped))
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(
        "presets:\n  mine: {input_size: [32, 32, 16], llm: {sizes: {hidden_size: 16}}}\n")
    assert list(load_preset("mine").input_size) == [32, 32, 16]
    with pytest.raises(ConfigError, match="no preset 'tiny'; presets: mine"):
        load_preset("tiny")


def test_presets_and_config_round_trip():
    paper = load_preset("paper")
    assert paper.input_size == (256, 256, 64) and paper.vit.patch_size == (32, 32, 4)
    assert (paper.vit.dim, paper.vit.depth, paper.vit.heads, paper.vit.mlp_dim) == (768, 12, 8, 2048)
    assert (paper.perceiver.depth, paper.perceiver.num_latents) == (6, 32)
    assert paper.mask_encoder.patch_size == (32, 32, 16) and paper.mask_encoder.depth == 3
    assert paper.lora_targets == ("q_proj", "v_proj") and (paper.lora.r, paper.lora.alpha, paper.lora.dropout) == (8, 32, 0.1)
    assert paper.freeze_vit and not load_preset("tiny").freeze_vit
    data = json.loads(json.dumps(paper.to_dict()))
    assert Reg2RGConfig.from_dict(data) == paper
    over = config_from_preset(data, llm__path="/x/llama", use_global=False, vit={"depth": 2})
    assert over.llm.path == "/x/llama" and not over.use_global and over.vit.depth == 2 and over.vit.dim == 768
    gpt2 = load_preset("tiny", llm={"arch": "gpt2", "sizes": {"n_embd": 32}})
    assert gpt2.lora_targets == ("c_attn",)
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_preset(data, vit={"widht": 3})
    with pytest.raises(ConfigError, match="exactly one"):
        config_from_preset(data, llm={"sizes": {"hidden_size": 8}})
    with pytest.raises(ConfigError, match="both off"):
        tiny_config(use_texture=False, use_geometry=False)


# --------------------------------------------------------------------------------------------------------------
# Merging by position, padding, variable regions


def test_visual_tokens_land_at_placeholders(tok):
    # the paper's model (no tiny aids): features exactly at the placeholders
    cfg = tiny_config(region_index_embedding=False, region_prefix_features=False, region_text_features=False)
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    regions = [["lung", "heart"], ["bone"], []]
    batch, vols = make_batch(tok, cfg, regions)
    ids = batch["input_ids"]
    with torch.no_grad():
        embeds = model.embed_inputs(ids, vols["global_volume"], vols["region_crops"], vols["region_masks"])
        glob = model.visual(vols["global_volume"])
        tex = model.visual(vols["region_crops"])
        geo = model.mask_proj(model.mask_encoder(vols["region_masks"]))
        text = model.llm.get_input_embeddings()
    tid = {t: tok.convert_tokens_to_ids(t) for t in (IMAGE_TOKEN, TEXTURE_TOKEN, GEOMETRY_TOKEN, *DELIMITER_TOKENS)}
    first = 0
    for b, row in enumerate(ids):
        img_pos = (row == tid[IMAGE_TOKEN]).nonzero().flatten()
        assert torch.allclose(embeds[b, img_pos], glob[b], atol=1e-5)
        tex_pos = (row == tid[TEXTURE_TOKEN]).nonzero().flatten()
        geo_pos = (row == tid[GEOMETRY_TOKEN]).nonzero().flatten()
        n = len(regions[b])
        assert len(tex_pos) == n * cfg.num_image_tokens and len(geo_pos) == n
        if n:
            assert torch.allclose(embeds[b, tex_pos], tex[first:first + n].reshape(-1, tex.shape[-1]), atol=1e-5)
            assert torch.allclose(embeds[b, geo_pos], geo[first:first + n], atol=1e-5)
        for k, d in enumerate(DELIMITER_TOKENS):
            pos = (row == tid[d]).nonzero().flatten()
            assert torch.equal(embeds[b, pos], model.delimiter_embeddings.weight[k].expand(len(pos), -1))
        special = torch.isin(row, torch.tensor(list(tid.values())))
        assert torch.equal(embeds[b, ~special], text(row[~special]))  # text and padding
        first += n


def test_region_index_embedding_marks_each_region_by_its_prompt_index(tok, tmp_path):
    cfg = tiny_config(region_index_embedding=True, region_prefix_features=False, region_text_features=False)
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    regions = [["lung", "heart", "bone"], ["bone"], []]
    batch, vols = make_batch(tok, cfg, regions, padding_side="left")
    ids = batch["input_ids"]
    with torch.no_grad():
        marked = model.embed_inputs(ids, vols["global_volume"], vols["region_crops"], vols["region_masks"])
        table, model.region_index_embeddings = model.region_index_embeddings, None
        plain = model.embed_inputs(ids, vols["global_volume"], vols["region_crops"], vols["region_masks"])
        model.region_index_embeddings = table
    tid = {t: tok.convert_tokens_to_ids(t) for t in (TEXTURE_TOKEN, GEOMETRY_TOKEN, REGION_START)}
    for b, row in enumerate(ids):
        in_region = (row == tid[TEXTURE_TOKEN]) | (row == tid[GEOMETRY_TOKEN])
        assert torch.equal(marked[b, ~in_region], plain[b, ~in_region])  # text, delimiters, global image, padding
        starts = (row == tid[REGION_START]).nonzero().flatten().tolist() + [len(row)]
        assert len(starts) - 1 == len(regions[b])
        for k, (lo, hi) in enumerate(zip(starts, starts[1:])):  # region k + 1 (its prompt index, not its area)
            pos = in_region.nonzero().flatten()
            pos = pos[(pos > lo) & (pos < hi)]
            assert len(pos) == cfg.prompt_layout.tokens_per_region
            assert torch.allclose(marked[b, pos] - plain[b, pos], table.weight[k].expand(len(pos), -1), atol=1e-6)
    out = save_trained(model, tmp_path / "model")  # the table is saved and loaded with the model
    loaded = load_trained(out)
    assert loaded.config.region_index_embedding
    with torch.no_grad():
        assert torch.equal(model(**batch, **vols).logits, loaded(**batch, **vols).logits)
    too_many, too_many_vols = make_batch(tok, cfg, [["lung"] * (len(REGIONS) + 1)])
    with pytest.raises(ValueError, match="more than 10 regions"):
        model(**too_many, **too_many_vols)
    assert build_model(tiny_config(region_index_embedding=False), tok).region_index_embeddings is None


def test_padding_and_variable_regions_do_not_change_a_sample(tok):
    cfg = tiny_config()
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    regions = [["lung", "heart", "pleura"], ["bone"]]
    batch, vols = make_batch(tok, cfg, regions)
    with torch.no_grad():
        both = model(**batch, **vols).logits
        alone_batch = {k: v[1:2, : int(batch["attention_mask"][1].sum())] for k, v in batch.items()}
        alone = model(**alone_batch, global_volume=vols["global_volume"][1:], region_crops=vols["region_crops"][3:],
                      region_masks=vols["region_masks"][3:], region_counts=[1]).logits
    n = alone.shape[1]
    assert both.shape[1] > n  # sample 1 was padded
    assert torch.allclose(both[1, :n], alone[0], atol=1e-4)
    with torch.no_grad():  # encoding in chunks changes nothing
        whole = model.visual(vols["region_crops"])
        model.visual.chunk_size = 2
        assert torch.allclose(model.visual(vols["region_crops"]), whole, atol=1e-5)
    with pytest.raises(ValueError, match="region_counts"):
        model(**batch, **{**vols, "region_counts": [2, 2]})
    with pytest.raises(ValueError, match="positions in input_ids"):
        model(**batch, **{**vols, "region_counts": None, "region_crops": vols["region_crops"][:3]})


def test_scan_without_regions(tok):
    cfg = tiny_config()
    model = build_model(cfg, tok).eval()
    batch, vols = make_batch(tok, cfg, [[], []], with_target=False, padding_side="left")
    assert vols["region_crops"].shape[0] == 0
    out = model.generate(batch["input_ids"], batch["attention_mask"], **vols, max_new_tokens=3)
    assert out.shape[0] == 2
    batch, vols = make_batch(tok, cfg, [[], ["lung"]])
    assert torch.isfinite(model(**batch, **vols).loss)


# --------------------------------------------------------------------------------------------------------------
# What trains


def trainable_groups(model):
    groups = {
        "perceiver": list(model.visual.perceiver.parameters()),
        "visual.proj": list(model.visual.proj.parameters()),
        "mask_encoder": list(model.mask_encoder.parameters()),
        "mask_proj": list(model.mask_proj.parameters()),
        "delimiters": [model.delimiter_embeddings.weight],
        "lora_B": [p for n, p in model.llm.named_parameters() if "lora_B" in n],
    }
    if model.region_index_embeddings is not None:  # the tiny preset's (not the paper's)
        groups["region index"] = [model.region_index_embeddings.weight]
    return groups


@pytest.mark.parametrize("freeze_vit, train_base", [(True, False), (False, False), (False, True)])
def test_only_intended_parameters_get_gradients(tok, freeze_vit, train_base):
    cfg = tiny_config(freeze_vit=freeze_vit, llm={"sizes": SMALL_LLAMA, "train_base": train_base})
    model = build_model(cfg, tok).train()
    with torch.no_grad():  # LoRA B starts at zero (so A gets no gradient yet): move it off zero
        for n, p in model.llm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.02)
    batch, vols = make_batch(tok, cfg, [["lung", "heart"], ["bone"]])
    model(**batch, **vols).loss.backward()
    for name, params in trainable_groups(model).items():
        assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params), name
    lora = [(n, p) for n, p in model.llm.named_parameters() if "lora_" in n]
    assert lora and all(p.grad is not None for _, p in lora)
    assert all("q_proj" in n or "v_proj" in n for n, _ in lora)
    base = [(n, p) for n, p in model.llm.named_parameters() if "lora_" not in n]
    if train_base:  # the random decoder of the tiny preset trains whole
        assert base and all(p.requires_grad and p.grad is not None for _, p in base)
    else:  # the paper's: frozen base, LoRA only
        assert base and all(not p.requires_grad and p.grad is None for _, p in base)
    vit = list(model.visual.vit.parameters())
    if freeze_vit:
        assert all(not p.requires_grad and p.grad is None for p in vit)
        assert not model.visual.vit.training and model.visual.perceiver.training  # still eval after .train()
        model.eval().train()
        assert not model.visual.vit.training
    else:
        assert all(p.grad is not None for p in vit) and model.visual.vit.training
    # Exactly these train: nothing else asks for gradients.
    expected = {id(p) for ps in trainable_groups(model).values() for p in ps} | {id(p) for _, p in lora}
    if not freeze_vit:
        expected |= {id(p) for p in vit}
    if train_base:
        expected |= {id(p) for _, p in base}
    assert {id(p) for p in model.parameters() if p.requires_grad} == expected


def test_radfm_key_mapping(tmp_path):
    from reg2rg.model.perceiver import PerceiverResampler
    from reg2rg.model.radfm import load_radfm_perceiver, load_radfm_vit
    from reg2rg.model.vit3d import ViT3D

    cfg = load_preset("paper", **PAPER_SMALL)
    ref_vit, ref_perc, ref_fc = write_radfm_files(cfg, tmp_path, fc_out=16)
    keys = set(torch.load(tmp_path / "RadFM_vit3d.pth"))
    assert {"to_patch_embedding.1.weight", "to_patch_embedding.2.weight", "pos_embedding.dep_embed.weight",
            "transformer.layers.0.0.norm.weight", "transformer.layers.0.0.fn.to_qkv.weight",
            "transformer.layers.0.0.fn.to_out.0.bias", "transformer.layers.1.1.fn.net.3.weight"} <= keys
    vit, perc, fc = ViT3D(cfg.vit, cfg.input_size), PerceiverResampler(cfg.vit.dim, cfg.perceiver), nn.Linear(cfg.vit.dim, 16)
    load_radfm_vit(vit, tmp_path / "RadFM_vit3d.pth")
    load_radfm_perceiver(perc, tmp_path / "RadFM_perceiver_fc.pth", fc=fc)
    vit.eval()  # as the frozen ViT runs (the paper preset has RadFM's dropout 0.1, active in train mode only)
    x = torch.randn(2, 3, *cfg.input_size)
    with torch.no_grad():
        tokens = vit(x)
        assert torch.allclose(tokens, ref_vit(x), atol=1e-4)
        assert torch.allclose(vit(x[:, :1]), ref_vit(x[:, :1].expand(-1, 3, -1, -1, -1)), atol=1e-4)  # grey -> 3 channels
        assert torch.allclose(perc(tokens), ref_perc(tokens), atol=1e-4)
    assert torch.equal(fc.weight, ref_fc.weight)

    # A wrong key: the error names the file, the key that is missing and the one that is unexpected.
    state = torch.load(tmp_path / "RadFM_vit3d.pth")
    state["transformer.layers.0.0.fn.to_qkv_renamed.weight"] = state.pop("transformer.layers.0.0.fn.to_qkv.weight")
    bad = tmp_path / "bad_vit3d.pth"
    torch.save(state, bad)
    with pytest.raises(InputError) as err:
        load_radfm_vit(ViT3D(cfg.vit, cfg.input_size), bad)
    msg = str(err.value)
    assert str(bad) in msg and "missing keys: transformer.layers.0.0.fn.to_qkv.weight" in msg
    assert "unexpected keys: transformer.layers.0.0.fn.to_qkv_renamed.weight" in msg
    # A wrong shape, and a Perceiver file without its "perceiver" part.
    state = torch.load(tmp_path / "RadFM_perceiver_fc.pth")
    state["perceiver"]["latents"] = state["perceiver"]["latents"][:2]
    torch.save(state, bad)
    with pytest.raises(InputError, match=r"shape mismatches: latents \(file \(2, 24\), model \(4, 24\)\)"):
        load_radfm_perceiver(PerceiverResampler(cfg.vit.dim, cfg.perceiver), bad)
    torch.save({"fc": state["fc"]}, bad)
    with pytest.raises(InputError, match="'perceiver'"):
        load_radfm_perceiver(PerceiverResampler(cfg.vit.dim, cfg.perceiver), bad)


# --------------------------------------------------------------------------------------------------------------
# Pretrained-folder code paths (the paper preset's), generation, save/load


def greedy_by_hand(model, batch, vols, steps):
    """Greedy decoding of one unpadded prompt with full forward passes (no cache, no generate)."""
    embeds = model.embed_inputs(batch["input_ids"], vols["global_volume"], vols["region_crops"], vols["region_masks"])
    emb = model.llm.get_input_embeddings()
    out = []
    for _ in range(steps):
        logits = model.llm(inputs_embeds=embeds).logits[0, -1]
        nxt = int(logits.argmax())
        out.append(nxt)
        if nxt == model.llm.config.eos_token_id:
            break
        embeds = torch.cat([embeds, emb(torch.tensor([[nxt]]))], dim=1)
    return out


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_pretrained_folder_path_generation_and_round_trip(tok, tmp_path, arch):
    llm_dir = tmp_path / "llm"
    saved = save_tiny_llm(arch, tok, llm_dir)
    write_radfm_files(load_preset("paper", **PAPER_SMALL), tmp_path)
    cfg = load_preset("paper", **PAPER_SMALL, llm={"arch": arch, "path": str(llm_dir), "dtype": "float32"},
                      lora={"target_modules": None}, vision_checkpoint=str(tmp_path / "RadFM_vit3d.pth"),
                      perceiver_checkpoint=str(tmp_path / "RadFM_perceiver_fc.pth"))
    tokenizer = load_tokenizer(cfg.tokenizer_path or cfg.llm.path)
    model = build_model(cfg, tokenizer)
    base = model.llm.get_base_model()
    name = "model.embed_tokens.weight" if arch == "llama" else "transformer.wte.weight"
    assert torch.equal(base.state_dict()[name], saved.state_dict()[name])
    targets = {"llama": ("q_proj", "v_proj"), "gpt2": ("c_attn",)}[arch]
    lora_names = [n for n, _ in model.llm.named_parameters() if "lora_A" in n]
    assert lora_names and all(any(t in n for t in targets) for n in lora_names)

    # One training step so that every trained part (LoRA included) moves off its init.
    model.train()
    batch, vols = make_batch(tokenizer, cfg, [["lung", "heart"], ["bone"]])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch, **vols).loss.backward()
    opt.step()
    model.eval()

    # Greedy by default, whatever generation_config.json says; the KV-cached result equals decoding by hand.
    one, one_vols = make_batch(tokenizer, cfg, [["lung", "heart"]], with_target=False)
    args = (one["input_ids"], one["attention_mask"])
    gen_vols = {k: v for k, v in one_vols.items()}
    first = model.generate(*args, **gen_vols, max_new_tokens=12)
    assert first.shape[1] > 3  # generation_config.json's max_new_tokens=3 did not leak either
    assert torch.equal(first, model.generate(*args, **gen_vols, max_new_tokens=12))
    with torch.no_grad():
        by_hand = greedy_by_hand(model, one, one_vols, 12)
    assert first[0, :len(by_hand)].tolist() == by_hand
    # Batched, left-padded prompts give what each prompt gives alone.
    two, two_vols = make_batch(tokenizer, cfg, [["bone"], ["lung", "heart"]], with_target=False, padding_side="left", seed=0)
    alone, alone_vols = make_batch(tokenizer, cfg, [["bone"]], with_target=False, seed=0)
    batched = model.generate(two["input_ids"], two["attention_mask"], **two_vols, max_new_tokens=8)
    single = model.generate(alone["input_ids"], alone["attention_mask"], **alone_vols, max_new_tokens=8)
    assert batched[0, :single.shape[1]].tolist() == single[0].tolist()

    # save_trained / load_trained: identical outputs; the adapter loads with PeftModel.from_pretrained.
    out = save_trained(model, tmp_path / "model")
    assert not (out / "llm_base").exists()
    loaded = load_trained(out)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(model(**batch, **vols).logits, loaded(**batch, **vols).logits)
    assert torch.equal(first, loaded.generate(*args, **gen_vols, max_new_tokens=12))
    from peft import PeftModel

    peft_llm = PeftModel.from_pretrained(load_base_llm(cfg, tokenizer), str(out / "adapter"))
    ours = dict(model.llm.named_parameters())
    for n, p in peft_llm.named_parameters():
        if "lora_" in n:
            assert torch.equal(p, ours[n]), n


def test_random_init_round_trip(tok, tmp_path):
    cfg = tiny_config()
    model = build_model(cfg, tok)
    batch, vols = make_batch(tok, cfg, [["lung"], ["heart", "bone"]])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch, **vols).loss.backward()
    opt.step()
    model.eval()
    out = save_trained(model, tmp_path / "model")
    assert (out / "llm_base" / "config.json").exists() and (out / "adapter" / "adapter_config.json").exists()
    loaded = load_trained(out)
    assert loaded.config.llm.path == "llm_base" and loaded.config.vit == cfg.vit
    with torch.no_grad():
        assert torch.equal(model(**batch, **vols).logits, loaded(**batch, **vols).logits)


# --------------------------------------------------------------------------------------------------------------
# Ablations and learning


@pytest.mark.parametrize("flag", ["use_texture", "use_geometry", "use_global", "use_rra", "use_lfd"])
def test_each_ablation_builds_and_runs(tok, flag):
    cfg = tiny_config(**{flag: False})
    model = build_model(cfg, tok).train()
    batch, vols = make_batch(tok, cfg, [["lung", "heart"], ["bone"]])
    out = model(**batch, **vols)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    ids = batch["input_ids"]
    assert (ids == tok.convert_tokens_to_ids(TEXTURE_TOKEN)).any() == cfg.use_texture
    assert (ids == tok.convert_tokens_to_ids(GEOMETRY_TOKEN)).any() == cfg.use_geometry
    assert (ids == tok.convert_tokens_to_ids(IMAGE_TOKEN)).any() == cfg.use_global
    target = tok.decode(batch["labels"][0][batch["labels"][0] >= 0], skip_special_tokens=True)
    assert bool(parse_rra(target)) == cfg.use_rra
    if not cfg.use_texture and not cfg.use_global:
        assert model.visual is None


def test_tiny_model_overfits_one_batch(tok):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = build_model(cfg, tok).train()
    batch, vols = make_batch(tok, cfg, [["lung", "heart"], ["pleura", "bone"]])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(50):
        loss = model(**batch, **vols).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.25 * losses[0], losses[::10]


def test_global_only_baseline_has_no_region_segments(tok):
    """The ablation `baseline`: global tokens only, the region texts as one report in their given order."""
    cfg = tiny_config(use_texture=False, use_geometry=False, use_rra=False)
    model = build_model(cfg, tok).train()
    batch, vols = make_batch(tok, cfg, [["lung", "heart"], ["bone"]])
    out = model(**batch, **vols)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    ids = batch["input_ids"]
    assert (ids == tok.convert_tokens_to_ids(IMAGE_TOKEN)).any()
    for token in (TEXTURE_TOKEN, GEOMETRY_TOKEN, "<region>"):
        assert not (ids == tok.convert_tokens_to_ids(token)).any()
    assert "The region" not in tok.decode(ids[0], skip_special_tokens=True)
    # No region cue in the prompt, so a shuffling RNG must not reorder the target.
    import random

    ex = build_example(tok, [("lung", "Lungs clear."), ("heart", "Heart normal.")], cfg, random.Random(3))
    assert ex.order == [0, 1] and ex.target == "Lungs clear. Heart normal."
    with pytest.raises(ConfigError, match="use_rra"):
        tiny_config(use_texture=False, use_geometry=False)
    with pytest.raises(ConfigError, match="no image"):
        tiny_config(use_texture=False, use_geometry=False, use_rra=False, use_global=False)


def test_region_prefix_features_give_each_phrase_its_regions_tokens(tok, tmp_path):
    """The tiny preset's aid (not the paper's): every "The region k is" token, in the prompt and in the report,
    carries the mean of region k's texture and geometry tokens; generation adds it to the phrases it writes."""
    from reg2rg.model.tokenizer import phrase_token_ids

    cfg = tiny_config(region_prefix_features=True, region_text_features=False)
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    regions = [["lung", "heart", "bone"], ["bone"]]
    batch, vols = make_batch(tok, cfg, regions, padding_side="left")
    ids = batch["input_ids"]
    with torch.no_grad():
        marked = model.embed_inputs(ids, vols["global_volume"], vols["region_crops"], vols["region_masks"])
        model.config.region_prefix_features = False
        plain = model.embed_inputs(ids, vols["global_volume"], vols["region_crops"], vols["region_masks"])
        model.config.region_prefix_features = True
    phrases = phrase_token_ids(tok)
    tid = {t: tok.convert_tokens_to_ids(t) for t in (TEXTURE_TOKEN, GEOMETRY_TOKEN, REGION_START)}
    for b, row in enumerate(ids):
        is_phrase = torch.isin(row, torch.tensor(phrases))
        assert torch.equal(marked[b, ~is_phrase], plain[b, ~is_phrase])
        starts = (row == tid[REGION_START]).nonzero().flatten().tolist() + [len(row)]
        in_region = (row == tid[TEXTURE_TOKEN]) | (row == tid[GEOMETRY_TOKEN])
        for k, (lo, hi) in enumerate(zip(starts, starts[1:])):
            pos = in_region.nonzero().flatten()
            pos = pos[(pos > lo) & (pos < hi)]
            mean = plain[b, pos].mean(0)
            where = (row == phrases[k]).nonzero().flatten()
            assert len(where) >= 1  # the prompt's "The region k is" (and the report's prefix, when trained)
            for p in where:
                assert torch.allclose(marked[b, p] - plain[b, p], mean, atol=1e-5)
    # Generation: the phrases the model writes itself get their region's terms (a hook on the LLM's input
    # embeddings, with the region means of the prompts it was given; rows repeated for beams map back).
    gen_batch, gen_vols = make_batch(tok, cfg, [["lung", "heart"], ["bone"]], with_target=False,
                                     padding_side="left")
    gen_ids = gen_batch["input_ids"]
    with torch.no_grad():
        gen_embeds = model.embed_inputs(gen_ids, gen_vols["global_volume"], gen_vols["region_crops"],
                                        gen_vols["region_masks"])
        table = model._region_means(gen_embeds, model.token_slot[gen_ids])  # as generate makes it
        emb = model.llm.get_input_embeddings()
        new = torch.tensor([[phrases[1], 5], [phrases[0], phrases[1]]]).repeat_interleave(2, dim=0)  # 2 beams
        hook = emb.register_forward_hook(model.prefix_hook(table))
        hooked = emb(new)
        hook.remove()
        diff = hooked - emb(new)
    for r, b in enumerate([0, 0, 1, 1]):
        assert torch.allclose(diff[r, 0], table[b, 1 if b == 0 else 0], atol=1e-6)
    assert torch.equal(diff[0, 1], torch.zeros_like(diff[0, 1])) and torch.allclose(diff[2, 1], table[1, 1])
    assert torch.equal(table[1, 1], torch.zeros_like(table[1, 1]))  # scan 1 has one region: no region 2
    for b, row in enumerate(gen_ids):  # the table holds each region's mean token, counted independently here
        starts = (row == tid[REGION_START]).nonzero().flatten().tolist() + [len(row)]
        in_region = (row == tid[TEXTURE_TOKEN]) | (row == tid[GEOMETRY_TOKEN])
        for k, (lo, hi) in enumerate(zip(starts, starts[1:])):
            pos = in_region.nonzero().flatten()
            pos = pos[(pos > lo) & (pos < hi)]
            assert torch.allclose(table[b, k], gen_embeds[b, pos].mean(0), atol=1e-6)
    new_ids = model.generate(**{k: gen_batch[k] for k in ("input_ids", "attention_mask")}, **gen_vols,
                             max_new_tokens=4)
    assert new_ids.shape[0] == 2
    assert not model.llm.get_input_embeddings()._forward_hooks  # the hook is gone after generate
    out = save_trained(model, tmp_path / "model")
    loaded = load_trained(out)
    assert loaded.config.region_prefix_features
    with torch.no_grad():
        assert torch.equal(model(**batch, **vols).logits, loaded(**batch, **vols).logits)
    with pytest.raises(ValueError, match="one token per 'The region k is'"):  # e.g. Llama-2's tokenizer
        from reg2rg.model.modeling import Reg2RGModel
        from reg2rg.model.tokenizer import special_token_ids, text_vocab_size

        Reg2RGModel(cfg, model.llm, special_token_ids(tok), text_vocab_size(tok), None)


def _embed_with(model, ids, vols, **flags):
    """model.embed_inputs with the config's region feature switches set as given for this call only."""
    saved = {name: getattr(model.config, name) for name in flags}
    try:
        for name, value in flags.items():
            setattr(model.config, name, value)
        with torch.no_grad():
            return model.embed_inputs(ids, vols["global_volume"], vols["region_crops"], vols["region_masks"])
    finally:
        for name, value in saved.items():
            setattr(model.config, name, value)


def _text_regions(row, token_slot, phrases):
    """Per position of `row`: (k, is_phrase), k the region whose report text the position belongs to (the report's
    last "The region k is" so far, that phrase included; 0 in the prompt and before the report's first phrase)."""
    report_start = int((token_slot[row] >= 0).nonzero().max()) + 1  # after the prompt's last region token
    k, out = 0, []
    for p, t in enumerate(row.tolist()):
        is_phrase = p >= report_start and t in phrases
        if is_phrase:
            k = phrases.index(t) + 1
        out.append((k, is_phrase))
    return out


def test_region_text_features_put_region_k_on_its_report_text_in_training_and_generation(tok):
    """The tiny preset's second aid (not the paper's): every report token after "The region k is", up to the next
    such phrase, carries region k's mean visual token too; the prompt's tokens do not. Generation gives each token
    it writes the same terms as the training sequence holds at that position (the hook tracks the region)."""
    from reg2rg.model.tokenizer import phrase_token_ids

    cfg = tiny_config(region_prefix_features=True, region_text_features=True)
    torch.manual_seed(0)
    model = build_model(cfg, tok).eval()
    regions = [["lung", "heart", "bone"], ["bone"]]
    batch, vols = make_batch(tok, cfg, regions, padding_side="right")
    ids = batch["input_ids"]
    marked = _embed_with(model, ids, vols)
    prefix_only = _embed_with(model, ids, vols, region_text_features=False)
    table = model._region_means(prefix_only, model.token_slot[ids])
    phrases = phrase_token_ids(tok)
    for b, row in enumerate(ids):
        regs = _text_regions(row, model.token_slot, phrases)
        for p, (k, is_phrase) in enumerate(regs):
            want = table[b, k - 1] if k and not is_phrase else torch.zeros_like(table[b, 0])
            assert torch.allclose(marked[b, p] - prefix_only[b, p], want, atol=1e-5), (b, p, k)
        # each region's text got its own region's features
        assert {k for k, is_phrase in regs if is_phrase} == set(range(1, len(regions[b]) + 1))
    # Text features without prefix features: the report's phrases and texts carry their region, the prompt nothing
    text_only = _embed_with(model, ids, vols, region_prefix_features=False)
    plain = _embed_with(model, ids, vols, region_prefix_features=False, region_text_features=False)
    for b, row in enumerate(ids):
        for p, (k, _) in enumerate(_text_regions(row, model.token_slot, phrases)):
            want = table[b, k - 1] if k else torch.zeros_like(table[b, 0])
            assert torch.allclose(text_only[b, p] - plain[b, p], want, atol=1e-5), (b, p, k)
    # Generation: the report of scan 0 fed one token at a time through the hook, with the table of the prompt
    gen_batch, _ = make_batch(tok, cfg, [regions[0]], with_target=False, padding_side="left")
    n0 = len(regions[0])  # scan 0's volumes of the training batch
    gen_vols = {"global_volume": vols["global_volume"][:1], "region_crops": vols["region_crops"][:n0],
                "region_masks": vols["region_masks"][:n0], "region_counts": [n0]}
    prompt = gen_batch["input_ids"][0]
    report = ids[0, len(prompt):][batch["attention_mask"][0, len(prompt):].bool()]
    assert torch.equal(ids[0, :len(prompt)], prompt)
    with torch.no_grad():
        gen_embeds = model.embed_inputs(gen_batch["input_ids"], gen_vols["global_volume"], gen_vols["region_crops"],
                                        gen_vols["region_masks"])
        gen_table = model._region_means(gen_embeds, model.token_slot[gen_batch["input_ids"]])
        emb = model.llm.get_input_embeddings()
        hook = emb.register_forward_hook(model.prefix_hook(gen_table))
        steps = [emb(report[t].view(1, 1))[0, 0] for t in range(len(report))]
        hook.remove()
    assert torch.allclose(gen_embeds[0], marked[0, :len(prompt)], atol=1e-5)
    for t, e in enumerate(steps):
        assert torch.allclose(e, marked[0, len(prompt) + t], atol=1e-5), t
    with pytest.raises(ValueError, match="beam search"):
        model.generate(**{k: gen_batch[k] for k in ("input_ids", "attention_mask")}, **gen_vols, num_beams=2,
                       max_new_tokens=2)
    new_ids = model.generate(**{k: gen_batch[k] for k in ("input_ids", "attention_mask")}, **gen_vols,
                             max_new_tokens=3)
    assert new_ids.shape[0] == 1 and not emb._forward_hooks


def test_authors_dropout_options(tok):
    """Dropout is off by default; the paper preset has the authors' 0.1 in the mask encoder (which trains) and in
    the ViT, whose dropout stays inactive while it is frozen unless frozen_vit_train_mode (the authors' fault)."""
    from reg2rg.model.config import ViTConfig, _default_mask_encoder

    assert (ViTConfig().dropout, ViTConfig().emb_dropout, _default_mask_encoder().dropout) == (0.0, 0.0, 0.0)
    assert Reg2RGConfig.__dataclass_fields__["frozen_vit_train_mode"].default is False
    paper = load_preset("paper")
    assert (paper.mask_encoder.dropout, paper.mask_encoder.emb_dropout, paper.vit.dropout) == (0.1, 0.1, 0.1)
    assert paper.frozen_vit_train_mode is False
    assert load_preset("tiny").mask_encoder.dropout == 0.0
    with pytest.raises(ConfigError, match="dropout"):
        tiny_config(mask_encoder={"dropout": 1.5})
    with pytest.raises(ConfigError, match="frozen_vit_train_mode"):
        tiny_config(freeze_vit=False, frozen_vit_train_mode=True)

    drop = {"dropout": 0.1, "emb_dropout": 0.1}
    cfg = tiny_config(freeze_vit=True, vit=drop, mask_encoder={**SMALL["mask_encoder"], **drop})
    model = build_model(cfg, tok).train()
    vol = torch.randn(2, 1, *cfg.input_size)
    mask = (torch.rand(2, 1, *cfg.input_size) > 0.5).float()
    # Ours: the frozen ViT stays in eval mode in a training model; its features are fixed (and cacheable).
    assert not model.visual.vit.training
    assert torch.equal(model.visual.vit(vol), model.visual.vit(vol))
    model.visual.vit_features(vol)
    # The mask encoder trains with its dropout: two passes differ in train mode, not in eval mode.
    assert not torch.equal(model.mask_encoder(mask), model.mask_encoder(mask))
    model.eval()
    assert torch.equal(model.mask_encoder(mask), model.mask_encoder(mask))

    authors = build_model(cfg.replace(frozen_vit_train_mode=True), tok).train()
    assert authors.visual.vit.training and not any(p.requires_grad for p in authors.visual.vit.parameters())
    with torch.no_grad():
        assert not torch.equal(authors.visual.vit(vol), authors.visual.vit(vol))
    with pytest.raises(ValueError, match="frozen_vit_train_mode"):
        authors.visual.vit_features(vol)
    authors.eval()
    assert torch.equal(authors.visual.vit(vol), authors.visual.vit(vol))
    # Dropout has no weights: the state dict (and so RadFM's key map) is the same with and without it.
    assert list(authors.state_dict()) == list(build_model(tiny_config(freeze_vit=True), tok).state_dict())
