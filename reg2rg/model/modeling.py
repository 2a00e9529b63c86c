"""Reg2RGModel: shared visual encoder, mask encoder, delimiter embeddings and a LoRA-wrapped causal LLM.

Inputs (all volumes [N, C, X, Y, Z], float, normalised by the data side: HU clamped to [-1000, 200] then
(x + 400) / 600, so air is -1 and the masked-out outside of a crop, written as -1024 HU, is -1 too):
- input_ids [B, L] int64 from `reg2rg.rra.build_example`/`pad_examples`: text ids plus placeholders
  (`<image_token>`, `<texture_token>`, `<geometry_token>`) and delimiters (`<image>`, `</image>`, `<region>`,
  `</region>`).
- global_volume [B, 1, X, Y, Z]: one per sample (omit when use_global is off).
- region_crops [R, 1, X, Y, Z]: the texture input of every region of the batch, sample after sample, each
  sample's regions in its prompt order (`example.order`); R = sum of per-sample region counts (omit when
  use_texture is off). With use_lfd off these are the uncropped masked volumes instead of the bbox crops.
- region_masks [R, 1, X, Y, Z]: the region masks in the global input's frame (the body crop, not cropped to
  the region), area-resized to values in [0, 1] (reg2rg.transforms.region_geometry_input), same order (omit when
  use_geometry is off).
Visual features are written into the LLM's input embeddings at the placeholder positions, in row-major order:
the k-th `<texture_token>` run of the batch receives region k's tokens. No widened vocabulary: special-token
ids never reach the LLM's embedding table and the LLM can never predict them.

Delimiter embeddings: the four delimiters get their own small trainable table (`delimiter_embeddings`,
4 x hidden) instead of rows of a resized LLM vocabulary. The LLM stays exactly as loaded (frozen, LoRA on
top), the table is saved with the other trained modules, and it starts at the statistics of the LLM's token
embeddings.
"""
from __future__ import annotations

import torch
from torch import nn

from reg2rg.model.config import Reg2RGConfig
from reg2rg.model.mask_encoder import MaskEncoder
from reg2rg.model.perceiver import PerceiverResampler
from reg2rg.model.vit3d import ViT3D
from reg2rg.constants import REGIONS
from reg2rg.rra import (DELIMITER_TOKENS, GEOMETRY_TOKEN, IMAGE_TOKEN, REGION_START, SPECIAL_TOKENS,
                            TEXTURE_TOKEN)

# Slots of the special-token lookup: 0-3 delimiters (rows of delimiter_embeddings), then the placeholders.
_SLOT = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
_IMAGE, _TEXTURE, _GEOMETRY = _SLOT[IMAGE_TOKEN], _SLOT[TEXTURE_TOKEN], _SLOT[GEOMETRY_TOKEN]
_N_DELIM = len(DELIMITER_TOKENS)


class VisualEncoder(nn.Module):
    """ViT -> Perceiver -> linear to the LLM width, shared by the global volume and every region crop."""

    def __init__(self, config: Reg2RGConfig, hidden_size: int):
        super().__init__()
        self.vit = ViT3D(config.vit, config.input_size)
        self.perceiver = PerceiverResampler(config.vit.dim, config.perceiver)
        self.proj = nn.Linear(config.vit.dim, hidden_size)
        self.freeze_vit = config.freeze_vit
        # The authors' frozen ViT followed the model into train mode (its dropout on); ours stays in eval mode.
        self.vit_train_mode = config.frozen_vit_train_mode
        self.chunk_size = config.encoder_chunk_size
        if self.freeze_vit:
            self.vit.requires_grad_(False)
            self.vit.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_vit and not self.vit_train_mode:
            self.vit.eval()  # a frozen encoder is never in train mode
        return self

    def _encode(self, volumes: torch.Tensor) -> torch.Tensor:
        if self.freeze_vit:
            with torch.no_grad():
                tokens = self.vit(volumes)
        else:
            tokens = self.vit(volumes)
        return self.resample(tokens)

    def resample(self, tokens: torch.Tensor) -> torch.Tensor:
        """ViT outputs [N, T, dim] -> [N, num_latents, hidden]: the trained part of the encoder."""
        return self.proj(self.perceiver(tokens.to(self.proj.weight.dtype)))

    @torch.no_grad()
    def vit_features(self, volumes: torch.Tensor) -> torch.Tensor:
        """The frozen ViT's outputs [N, T, dim] for volumes [N, C, X, Y, Z] (chunked like forward): fixed per
        input while the ViT is frozen (eval mode, no dropout), so they can be computed once and cached
        (training.cache_vit_features) and fed to `resample` instead of the volumes."""
        if not self.freeze_vit:
            raise ValueError("vit_features: the ViT trains (freeze_vit is off), its outputs are not fixed")
        if self.vit_train_mode:
            raise ValueError("vit_features: frozen_vit_train_mode keeps the ViT's dropout on, its outputs are not fixed")
        if not self.chunk_size or volumes.shape[0] <= self.chunk_size:
            return self.vit(volumes)
        return torch.cat([self.vit(c) for c in volumes.split(self.chunk_size)], dim=0)

    def forward(self, volumes: torch.Tensor) -> torch.Tensor:
        """[N, C, X, Y, Z] -> [N, num_latents, hidden]."""
        if not self.chunk_size or volumes.shape[0] <= self.chunk_size:
            return self._encode(volumes)
        return torch.cat([self._encode(c) for c in volumes.split(self.chunk_size)], dim=0)


class Reg2RGModel(nn.Module):
    def __init__(self, config: Reg2RGConfig, llm: nn.Module, token_ids: dict[str, int], text_vocab_size: int,
                 phrase_ids: list[int] | None = None):
        """llm: the causal LM, already wrapped with peft. token_ids: id of each of SPECIAL_TOKENS. phrase_ids: the
        ids of the one-token phrases "The region k is", k = 1..10 (needed by region_prefix_features)."""
        super().__init__()
        self.config = config
        self.llm = llm
        embed = llm.get_input_embeddings()
        hidden = embed.embedding_dim
        self.text_vocab_size = text_vocab_size
        if text_vocab_size > embed.num_embeddings:
            raise ValueError(f"the tokenizer's text vocabulary ({text_vocab_size}) exceeds the LLM's "
                             f"embedding table ({embed.num_embeddings})")
        needs_images = config.use_global or config.use_texture
        self.visual = VisualEncoder(config, hidden) if needs_images else None
        self.mask_encoder = MaskEncoder(config.mask_encoder, config.input_size) if config.use_geometry else None
        self.mask_proj = nn.Linear(config.mask_encoder.dim, hidden) if config.use_geometry else None
        self.delimiter_embeddings = nn.Embedding(_N_DELIM, hidden)
        self.region_index_embeddings = nn.Embedding(len(REGIONS), hidden) if config.region_index_embedding else None
        with torch.no_grad():
            w = embed.weight.float()
            init = w.mean(0) + torch.randn(_N_DELIM, hidden) * w.std(0)
            self.delimiter_embeddings.weight.copy_(init)
            if self.region_index_embeddings is not None:
                self.region_index_embeddings.weight.normal_(0.0, float(w.std()))
        size = max(max(token_ids.values()) + 1, text_vocab_size)
        slot = torch.full((size,), -1, dtype=torch.long)
        for tok, tid in token_ids.items():
            slot[tid] = _SLOT[tok]
        self.register_buffer("token_slot", slot, persistent=False)
        if config.region_phrase_features and not phrase_ids:
            raise ValueError("region_prefix_features and region_text_features need a tokenizer with one token per "
                             "'The region k is' (the tiny tokenizer's): this one splits the phrase")
        phrase = torch.zeros((size,), dtype=torch.long)  # k for the token of "The region k is", else 0
        for k, tid in enumerate(phrase_ids or [], start=1):
            if tid < size:
                phrase[tid] = k
        self.register_buffer("phrase_index", phrase, persistent=False)
        self.token_ids = dict(token_ids)
        self.tokenizer = None  # set by build_model / load_trained for convenience

    # -- modes ----------------------------------------------------------------------------------------------
    def enable_gradient_checkpointing(self) -> None:
        base = self.llm.get_base_model()
        if hasattr(base, "activation_checkpointing_enable"):  # transformers >= 5 name
            base.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        for module in self.modules():
            if isinstance(module, (ViT3D, PerceiverResampler)):
                module.gradient_checkpointing = True

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """Every weight outside the LLM (the LoRA adapter is saved by peft)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("llm.")}

    # -- embeddings -----------------------------------------------------------------------------------------
    def embed_inputs(self, input_ids: torch.Tensor, global_volume: torch.Tensor | None = None,
                     region_crops: torch.Tensor | None = None, region_masks: torch.Tensor | None = None,
                     region_counts=None, global_vit: torch.Tensor | None = None,
                     texture_vit: torch.Tensor | None = None) -> torch.Tensor:
        """inputs_embeds [B, L, hidden]: text embeddings, delimiter embeddings, visual tokens at the placeholders.
        global_vit / texture_vit: the frozen ViT's outputs ([B, T, dim] / [R, T, dim], VisualEncoder.vit_features)
        in place of global_volume / region_crops (cached features: the ViT does not run)."""
        if int(input_ids.max()) >= self.token_slot.numel() or int(input_ids.min()) < 0:
            raise ValueError(f"input_ids hold ids outside [0, {self.token_slot.numel()})")
        slot = self.token_slot[input_ids]
        special = slot >= 0
        embeds = self.llm.get_input_embeddings()(input_ids.masked_fill(special, 0))
        dtype = embeds.dtype
        is_delim = special & (slot < _N_DELIM)
        delim = self.delimiter_embeddings(slot.clamp(0, _N_DELIM - 1)).to(dtype)
        embeds = torch.where(is_delim.unsqueeze(-1), delim, embeds)

        cfg = self.config
        n_global = 0
        volumes = []
        cached = global_vit is not None or texture_vit is not None
        if cfg.use_global and not cached:
            if global_volume is None:
                raise ValueError("use_global is on: global_volume [B, 1, X, Y, Z] is required")
            volumes.append(global_volume)
            n_global = global_volume.shape[0]
        if cfg.use_texture and not cached:
            if region_crops is None:
                raise ValueError("use_texture is on: region_crops [R, 1, X, Y, Z] is required")
            volumes.append(region_crops)
        features = {}
        if cached:  # cached frozen-ViT outputs instead of volumes
            tokens = []
            if cfg.use_global:
                if global_vit is None:
                    raise ValueError("use_global is on: global_vit [B, T, dim] is required with texture_vit")
                tokens.append(global_vit)
            if cfg.use_texture:
                if texture_vit is None:
                    raise ValueError("use_texture is on: texture_vit [R, T, dim] is required with global_vit")
                tokens.append(texture_vit)
            tok = torch.cat(tokens, dim=0) if len(tokens) > 1 else tokens[0]
            enc = self.visual.resample(tok) if tok.shape[0] else tok.new_zeros((0, cfg.num_image_tokens, embeds.shape[-1]))
            n_global = global_vit.shape[0] if cfg.use_global else 0
            if cfg.use_global:
                features[_IMAGE] = enc[:n_global]
            if cfg.use_texture:
                features[_TEXTURE] = enc[n_global:]
        if volumes:
            vol = torch.cat(volumes, dim=0) if len(volumes) > 1 else volumes[0]
            vol = vol.to(self.visual.proj.weight.dtype)
            enc = self.visual(vol) if vol.shape[0] else vol.new_zeros((0, cfg.num_image_tokens, embeds.shape[-1]))
            if cfg.use_global:
                features[_IMAGE] = enc[:n_global]
            if cfg.use_texture:
                features[_TEXTURE] = enc[n_global:]
        if cfg.use_geometry:
            if region_masks is None:
                raise ValueError("use_geometry is on: region_masks [R, 1, X, Y, Z] is required")
            if region_masks.shape[0]:
                geo = self.mask_proj(self.mask_encoder(region_masks.to(self.mask_proj.weight.dtype)))
            else:
                geo = region_masks.new_zeros((0, embeds.shape[-1]))
            features[_GEOMETRY] = geo.unsqueeze(1)

        if region_counts is not None:
            self._check_counts(slot, region_counts, texture_vit if cached else region_crops, region_masks)
        for slot_id in (_IMAGE, _TEXTURE, _GEOMETRY):
            where = slot == slot_id
            n_pos = int(where.sum())
            feat = features.get(slot_id)
            n_feat = 0 if feat is None else feat.shape[0] * feat.shape[1]
            if n_pos != n_feat:
                raise ValueError(f"{n_pos} {SPECIAL_TOKENS[slot_id]} positions in input_ids but {n_feat} visual "
                                 "tokens: prompts and volumes disagree (regions per sample, or the ablation flags)")
            if n_feat:
                embeds = embeds.masked_scatter(where.unsqueeze(-1), feat.reshape(-1, feat.shape[-1]).to(dtype))
        if self.region_index_embeddings is not None:
            embeds = embeds + self._region_index_terms(slot).to(dtype)
        if cfg.region_phrase_features:
            table = self._region_means(embeds, slot)
            embeds = embeds + self._region_terms(self._phrase_regions(input_ids), table)
        return embeds

    @staticmethod
    def _region_positions(slot: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, L] 1-based prompt index of the enclosing region, counted by the <region> delimiters before each
        position; [B, L] True at the texture and geometry tokens)."""
        return torch.cumsum(slot == _SLOT[REGION_START], dim=1), (slot == _TEXTURE) | (slot == _GEOMETRY)

    def _region_means(self, embeds: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """[B, K, hidden]: the mean of region k's texture and geometry tokens in each prompt (zero for k beyond
        the prompt's regions), K = 10. The same from embed_inputs' output: the prefix terms it adds lie on text
        tokens, never on region tokens."""
        index, in_region = self._region_positions(slot)
        k = len(REGIONS)
        onehot = torch.nn.functional.one_hot((index - 1).clamp(0, k - 1), k).to(embeds.dtype)
        onehot = onehot * in_region.unsqueeze(-1).to(embeds.dtype)  # [B, L, K]
        sums = torch.einsum("blk,blh->bkh", onehot, embeds)
        return sums / onehot.sum(1).clamp(min=1).unsqueeze(-1)

    @torch.no_grad()
    def region_means(self, input_ids: torch.Tensor, global_volume: torch.Tensor | None = None,
                     region_crops: torch.Tensor | None = None, region_masks: torch.Tensor | None = None,
                     region_counts=None) -> torch.Tensor:
        """[B, K, hidden]: what the decoder reads of each region at "The region k is" (the mean of region k's
        texture and geometry tokens, in prompt order; benchmarks/finding_probe.py probes it)."""
        embeds = self.embed_inputs(input_ids, global_volume, region_crops, region_masks, region_counts)
        return self._region_means(embeds, self.token_slot[input_ids])

    def _phrase_regions(self, input_ids: torch.Tensor, start: torch.Tensor | None = None) -> torch.Tensor:
        """[R, L]: the region k whose features each position gets, 0 for none. k at every "The region k is" token
        (region_prefix_features); with region_text_features also at every later position up to the next phrase,
        counting only the report's phrases: those after the prompt's last region token, or, for tokens that
        generate embeds one at a time (`start`: [R] the region each row is writing, 0 for none), every phrase."""
        k = self.phrase_index[input_ids.clamp(0, self.phrase_index.numel() - 1)]  # [R, L], 0: no phrase
        if not self.config.region_text_features:
            return k
        pos = torch.arange(k.shape[1], device=k.device).expand_as(k)
        phrase = k > 0
        if start is None:
            special = self.token_slot[input_ids] >= 0
            last_region = torch.where(special, pos, torch.full_like(pos, -1)).max(dim=1, keepdim=True).values
            phrase = phrase & (pos > last_region)
        last = torch.where(phrase, pos, torch.full_like(pos, -1)).cummax(dim=1).values
        text = k.gather(1, last.clamp(min=0)) * (last >= 0)
        if start is not None:
            text = torch.where(last >= 0, text, start.unsqueeze(1).expand_as(text))
        if not self.config.region_prefix_features:  # the prompt's phrases then carry nothing
            return text
        return torch.where(k > 0, k, text)

    @staticmethod
    def _region_terms(k: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
        """[R, L, hidden]: table[b, k] at every position of row r that `k` ([R, L], _phrase_regions) gives a region
        k > 0 (b = r // (R / B): generate repeats each prompt's rows for beams), zero elsewhere."""
        rows = torch.arange(k.shape[0], device=k.device) // (k.shape[0] // table.shape[0])
        terms = table[rows.unsqueeze(1), (k - 1).clamp(min=0)]
        return terms * (k > 0).unsqueeze(-1).to(table.dtype)

    def prefix_hook(self, table: torch.Tensor):
        """A forward hook for the LLM's input embeddings while generate runs: the tokens generate embeds itself
        (each new token) get their region's features from `table` (_region_means of the prompts) when they are
        a "The region k is" phrase, and with region_text_features also when they follow one (the hook keeps the
        region each row is writing; rows must keep their order from step to step: no beam search)."""
        writing = None  # [R] the region each row writes (0: none yet)

        def hook(module, args, output):
            nonlocal writing
            ids = args[0]
            if writing is None:
                writing = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)
            k = self._phrase_regions(ids, writing)
            writing = k[:, -1]
            return output + self._region_terms(k, table).to(output.dtype)
        return hook

    def _region_index_terms(self, slot: torch.Tensor) -> torch.Tensor:
        """[B, L, hidden]: region k's index embedding at its texture and geometry positions (k counted by the
        <region> delimiters before them, so it is the prompt index, never the area), zero elsewhere."""
        index, in_region = self._region_positions(slot)
        if int(index.masked_fill(~in_region, 0).max()) > self.region_index_embeddings.num_embeddings:
            raise ValueError(f"a prompt holds more than {self.region_index_embeddings.num_embeddings} regions, "
                             "the size of the region index table")
        terms = self.region_index_embeddings((index - 1).clamp(min=0))
        return terms * in_region.unsqueeze(-1)

    def _check_counts(self, slot, region_counts, region_crops, region_masks) -> None:
        counts = torch.as_tensor(region_counts, device=slot.device).long()
        per_region = self.config.prompt_layout.tokens_per_region
        placed = (slot == _TEXTURE).sum(1) + (slot == _GEOMETRY).sum(1)
        if not torch.equal(placed, counts * per_region):
            raise ValueError(f"region_counts {counts.tolist()} disagree with the prompts, which hold "
                             f"{(placed // per_region).tolist()} regions")
        for name, t in (("region_crops", region_crops), ("region_masks", region_masks)):
            if t is not None and t.shape[0] != int(counts.sum()):
                raise ValueError(f"{name} holds {t.shape[0]} regions, region_counts sum to {int(counts.sum())}")

    # -- forward / generate ---------------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, global_volume: torch.Tensor | None = None,
                region_crops: torch.Tensor | None = None, region_masks: torch.Tensor | None = None,
                region_counts=None, global_vit: torch.Tensor | None = None, texture_vit: torch.Tensor | None = None,
                **llm_kwargs):
        """The LLM's output (loss when labels are given, logits [B, L, V])."""
        embeds = self.embed_inputs(input_ids, global_volume, region_crops, region_masks, region_counts,
                                   global_vit=global_vit, texture_vit=texture_vit)
        return self.llm(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **llm_kwargs)

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                 global_volume: torch.Tensor | None = None, region_crops: torch.Tensor | None = None,
                 region_masks: torch.Tensor | None = None, region_counts=None, *, max_new_tokens: int = 512,
                 num_beams: int = 1, do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 top_k: int = 0, repetition_penalty: float = 1.0, length_penalty: float = 1.0,
                 no_repeat_ngram_size: int = 0, eos_token_id: int | None = None,
                 pad_token_id: int | None = None) -> torch.Tensor:
        """New token ids [B, T] (prompt not included; rows end in eos then pad). Prompts must be LEFT-padded.

        Decoding is exactly what the arguments say (greedy by default): the GenerationConfig is built here,
        and the LLM's own generation_config was replaced by a neutral one when the model was built, so
        nothing is inherited from a generation_config.json beside the LLM.
        """
        from transformers import GenerationConfig

        if attention_mask is not None and bool((attention_mask[:, -1] == 0).any()):
            raise ValueError("generate needs left-padded prompts (pad_examples(..., padding_side='left'))")
        eos = eos_token_id if eos_token_id is not None else self.llm.config.eos_token_id
        pad = pad_token_id if pad_token_id is not None else self.llm.config.pad_token_id
        kwargs = dict(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=do_sample,
                      repetition_penalty=repetition_penalty, length_penalty=length_penalty,
                      no_repeat_ngram_size=no_repeat_ngram_size, eos_token_id=eos,
                      pad_token_id=pad if pad is not None else eos, use_cache=True)
        if do_sample:
            kwargs.update(temperature=temperature, top_p=top_p, top_k=top_k)
        gen_config = GenerationConfig(**kwargs)
        if self.config.region_text_features and num_beams > 1:
            raise ValueError("region_text_features: generation keeps track of the region each row writes, which "
                             "beam search reorders; decode greedily or by sampling (num_beams 1)")
        embeds = self.embed_inputs(input_ids, global_volume, region_crops, region_masks, region_counts)
        if not self.config.region_phrase_features:
            return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, generation_config=gen_config)
        table = self._region_means(embeds, self.token_slot[input_ids])
        hook = self.llm.get_input_embeddings().register_forward_hook(self.prefix_hook(table))
        try:
            return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, generation_config=gen_config)
        finally:
            hook.remove()
