"""The Reg2RG model configuration: one dataclass tree, JSON/YAML round-trippable, validated on creation.

Axis order: every 3-vector here (input size, patch sizes, position grids) is written (x, y, z), the
order of `docs/formats.md`. Model tensors are laid out [N, C, X, Y, Z] to match: a SimpleITK array
`[z, y, x]` becomes model input with `reg2rg.dataset.to_input_layout(array, config.input_layout)`, a transpose
(2, 1, 0), plus a reversal of x and y for `input_layout: ras`. Slices last is also the layout RadFM's ViT was
trained on (nibabel arrays), so its patch (32, 32, 4) keeps 4 slices per patch; which in-plane voxel order
the authors' RadGenome files had (LPS or RAS) is open: docs/formats.md, "What the encoder sees".

Presets live in `config/config.yaml` under `presets:`; `config_from_preset(mapping, **overrides)` turns one
preset mapping into a config.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reg2rg.constants import INPUT_LAYOUTS
from reg2rg.errors import ConfigError
from reg2rg.geometry import size_triple

ARCHS = ("llama", "gpt2")
# LoRA targets per decoder when the config leaves them unset: Llama's attention query and value projections
# (the paper's choice), GPT-2's fused query/key/value projection.
DEFAULT_LORA_TARGETS = {"llama": ("q_proj", "v_proj"), "gpt2": ("c_attn",)}


@dataclass
class ViTConfig:
    """A 3D ViT in RadFM's layout (pre-norm blocks, learned per-axis position tables)."""

    patch_size: tuple[int, int, int] = (32, 32, 4)
    dim: int = 768
    depth: int = 12
    heads: int = 8
    dim_head: int = 64
    mlp_dim: int = 2048
    # RadFM's ViT reads 3 channels (a grey volume repeated); a 1-channel input is repeated to this many.
    in_channels: int = 3
    # Length of the learned position table per axis. RadFM built its tables for 512 x 512 x 512 inputs with
    # patch 32 x 32 x 4, i.e. (16, 16, 128), and reads every (table // grid)-th row for a smaller grid.
    # None: exactly the input's patch grid.
    pos_grid: tuple[int, int, int] | None = (16, 16, 128)
    # Dropout as RadFM's ViT class has it (the authors built both their ViTs with 0.1): `dropout` on the attention
    # weights, the attention output and both MLP layers' outputs; `emb_dropout` on the patch embeddings after the
    # position table is added. Active in train mode only: a frozen ViT is in eval mode unless
    # Reg2RGConfig.frozen_vit_train_mode is on.
    dropout: float = 0.0
    emb_dropout: float = 0.0

    def __post_init__(self):
        self.patch_size = size_triple(self.patch_size, "patch_size")
        if self.pos_grid is not None:
            self.pos_grid = size_triple(self.pos_grid, "pos_grid")
        for name in ("dropout", "emb_dropout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value < 1:
                raise ConfigError(f"{name}: expected a probability in [0, 1), got {value!r}")
            setattr(self, name, float(value))


@dataclass
class PerceiverConfig:
    """Flamingo/RadFM Perceiver resampler: `num_latents` queries cross-attend to the ViT tokens `depth` times."""

    depth: int = 6
    num_latents: int = 32
    heads: int = 8
    dim_head: int = 64
    ff_mult: int = 4


@dataclass
class LLMConfig:
    """The decoder: exactly one of `path` (a local Hugging Face folder) or `sizes` (random init) is set."""

    arch: str = "llama"
    path: str | None = None
    # Random init: keyword arguments of LlamaConfig / GPT2Config (e.g. hidden_size, num_hidden_layers,
    # num_attention_heads, intermediate_size). vocab_size and the bos/eos/pad ids come from the tokenizer.
    sizes: dict[str, Any] | None = None
    vocab_size: int | None = None  # None: the tokenizer's text vocabulary
    dtype: str = "float32"  # dtype of the LLM weights ("bfloat16" for the paper's 7B)
    # Train every LLM weight besides LoRA. Off for a pretrained decoder (the paper: frozen, LoRA only); on for a
    # randomly initialised one, which has nothing to keep and cannot learn through LoRA alone (its frozen
    # random head and final norm cap the logits near uniform).
    train_base: bool = False


@dataclass
class LoRASettings:
    r: int = 8
    alpha: int = 32
    dropout: float = 0.1
    target_modules: tuple[str, ...] | None = None  # None: DEFAULT_LORA_TARGETS[llm.arch]

    def __post_init__(self):
        if self.target_modules is not None:
            self.target_modules = tuple(self.target_modules)


def _default_mask_encoder() -> ViTConfig:
    # The authors' light mask ViT: patch 32 x 32 x 16, width 255 (3 x 85 for the per-axis position tables),
    # 3 blocks, 8 heads of 64, MLP 512, one channel.
    return ViTConfig(patch_size=(32, 32, 16), dim=255, depth=3, heads=8, dim_head=64, mlp_dim=512,
                     in_channels=1, pos_grid=None)


@dataclass
class Reg2RGConfig:
    """Everything that fixes the model's shape and behaviour; written beside a trained model as JSON."""

    input_size: tuple[int, int, int] = (256, 256, 64)  # (x, y, z) of the global volume, crops and masks
    # Voxel order of every visual input (global, texture, geometry) on the model's axes [X, Y, Z]
    # (reg2rg.dataset.to_input_layout): "lps", the ingested volume's (X from the patient's right to left, Y anterior
    # to posterior, Z inferior to superior); "ras", X and Y reversed (X left to right, Y posterior to anterior),
    # what nibabel gives for a RAS+ file. A pretrained ViT sees a flipped volume as another one.
    input_layout: str = "lps"
    vit: ViTConfig = field(default_factory=ViTConfig)
    perceiver: PerceiverConfig = field(default_factory=PerceiverConfig)
    mask_encoder: ViTConfig = field(default_factory=_default_mask_encoder)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoRASettings = field(default_factory=LoRASettings)
    tokenizer_path: str | None = None  # None: the LLM folder (paper) or a tokenizer the workflow trains (tiny)
    tokenizer_vocab_size: int = 1024  # byte-level BPE size when the workflow trains the tiny tokenizer
    vision_checkpoint: str | None = None  # RadFM_vit3d.pth
    perceiver_checkpoint: str | None = None  # RadFM_perceiver_fc.pth (its "perceiver" part)
    load_radfm_fc: bool = False  # also take RadFM's fc (only fits an LLM of RadFM's width, 5120)
    freeze_vit: bool = True
    # The authors' fault, off by default: their frozen ViT stayed in train mode, so its dropout (vit.dropout,
    # vit.emb_dropout) was active at every training step. On: the same, for reproducing their training; the ViT's
    # outputs then change from step to step (training.cache_vit_features is refused).
    frozen_vit_train_mode: bool = False
    gradient_checkpointing: bool = False
    encoder_chunk_size: int | None = None  # volumes per visual-encoder call (None: all in one call)
    max_seq_len: int = 2048  # longest example; targets are cut to fit, prompts never
    # Not in the paper (off there): add a learned embedding of the region's prompt index (1..10) to its texture
    # and geometry tokens, so a small random decoder finds "region N"'s segment by content, not by distance.
    region_index_embedding: bool = False
    # Not in the paper (off there): add region k's mean visual token (its texture and geometry tokens, as placed
    # in the prompt) to the embedding of every one-token "The region k is" phrase (the tiny tokenizer's), so that
    # a small random decoder reads region k's features where it writes region k's name and text, instead of
    # first having to learn to find the segment (docs/evaluation.md, "The demo's numbers").
    region_prefix_features: bool = False
    # Not in the paper (off there): region k's mean visual token also on every token of the report after "The
    # region k is" up to the next such phrase (region k's name and text), so that the token that decides between a
    # normal text and a finding reads region k's features where it is predicted, not three or more tokens back
    # through attention. Needs region_prefix_features' one-token phrases; generation keeps track of the region
    # it is writing (greedy or sampling; not beam search). docs/evaluation.md, "The demo's numbers".
    region_text_features: bool = False
    # Ablations (all on = the paper's model).
    use_texture: bool = True  # 32 texture tokens per region
    use_geometry: bool = True  # 1 geometry (mask) token per region
    use_global: bool = True  # the global image segment of the prompt
    use_rra: bool = True  # "The region i is <area>: " prefixes in the target
    use_lfd: bool = True  # off: the texture input is the uncropped masked volume (the data side supplies it)

    @property
    def region_phrase_features(self) -> bool:
        """Whether any "The region k is" phrase or report text carries its region's features (the tiny aids)."""
        return self.region_prefix_features or self.region_text_features

    def __post_init__(self):
        self.input_size = size_triple(self.input_size, "input_size")
        self.validate()

    # -- derived values ---------------------------------------------------------------------------------
    @property
    def num_image_tokens(self) -> int:
        return self.perceiver.num_latents

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return tuple(self.lora.target_modules or DEFAULT_LORA_TARGETS[self.llm.arch])

    @property
    def prompt_layout(self):
        from reg2rg.rra import PromptLayout

        return PromptLayout(
            num_image_tokens=self.perceiver.num_latents,
            num_texture_tokens=self.perceiver.num_latents if self.use_texture else 0,
            use_geometry=self.use_geometry,
            use_global=self.use_global,
            use_rra=self.use_rra,
        )

    def validate(self) -> None:
        if self.llm.arch not in ARCHS:
            raise ConfigError(f"llm.arch: {self.llm.arch!r} is not one of {', '.join(ARCHS)}")
        if (self.llm.path is None) == (self.llm.sizes is None):
            raise ConfigError("llm: set exactly one of `path` (a local pretrained folder) or `sizes` (random init)")
        if not (self.use_texture or self.use_geometry):
            # The global-only baseline: no region segments in the prompt, the region texts as one report.
            if not self.use_global:
                raise ConfigError("use_global, use_texture and use_geometry are all off: the model would see no image")
            if self.use_rra:
                raise ConfigError("use_texture and use_geometry are both off (global only): the prompt has no "
                                  "regions to align, so use_rra must be off too")
        for name, vit in (("vit", self.vit), ("mask_encoder", self.mask_encoder)):
            for axis, size, patch in zip("xyz", self.input_size, vit.patch_size):
                if size % patch:
                    raise ConfigError(f"{name}.patch_size: input_size {axis}={size} is not divisible by {patch}")
            if vit.dim % 3:
                raise ConfigError(f"{name}.dim: {vit.dim} must be divisible by 3 (one position table per axis)")
            if vit.pos_grid is not None:
                grid = [s // p for s, p in zip(self.input_size, vit.patch_size)]
                for axis, table, n in zip("xyz", vit.pos_grid, grid):
                    if table % n:
                        raise ConfigError(f"{name}.pos_grid: {axis} table of {table} rows cannot serve a grid of {n}")
        if self.frozen_vit_train_mode and not self.freeze_vit:
            raise ConfigError("frozen_vit_train_mode is for a frozen ViT (freeze_vit); a trained ViT is in train "
                              "mode anyway")
        if self.input_layout not in INPUT_LAYOUTS:
            raise ConfigError(f"input_layout: {self.input_layout!r} is not one of {', '.join(INPUT_LAYOUTS)}")
        if self.perceiver.num_latents <= 0:
            raise ConfigError("perceiver.num_latents must be positive")

    # -- (de)serialisation ---------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def plain(v):
            if isinstance(v, tuple):
                return [plain(x) for x in v]
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, list):
                return [plain(x) for x in v]
            return v

        return plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Reg2RGConfig":
        return _build(cls, data, "")

    def to_json(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def from_json(cls, path) -> "Reg2RGConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path}: cannot read the model config: {err}") from err
        return cls.from_dict(data)

    def replace(self, **overrides) -> "Reg2RGConfig":
        return config_from_preset(self.to_dict(), **overrides)


_NESTED = {"vit": ViTConfig, "perceiver": PerceiverConfig, "mask_encoder": ViTConfig, "llm": LLMConfig,
           "lora": LoRASettings}


def unknown_keys(data: Any, cls: type | None = None) -> list[tuple[str, list[str]]]:
    """(dotted path, known names at that level) of every key of a model config mapping, or a partial one such
    as an ablation's overrides, that no field of Reg2RGConfig or its parts has (`vit.dpth`). `llm.sizes` is
    the decoder's own Hugging Face config and is not checked here."""
    cls = cls or Reg2RGConfig
    if not isinstance(data, dict):
        return []
    names = sorted(f.name for f in dataclasses.fields(cls))
    out = []
    for key, value in data.items():
        if key not in names:
            out.append((str(key), names))
        elif cls is Reg2RGConfig and key in _NESTED:
            out += [(f"{key}.{path}", known) for path, known in unknown_keys(value, _NESTED[key])]
    return out


def _build(cls, data, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'model config'}: expected a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where or 'model config'}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        if cls is Reg2RGConfig and key in _NESTED:
            value = dict(value or {})
            if key == "mask_encoder":
                # Unset mask-encoder fields take the authors' mask ViT values, not the image ViT's.
                value = {**dataclasses.asdict(_default_mask_encoder()), **value}
            value = _build(_NESTED[key], value, key)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where or 'model config'}: {err}") from err


def _deep_merge(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key != "sizes":
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def config_from_preset(mapping: dict[str, Any], **overrides) -> Reg2RGConfig:
    """A config from one preset mapping (e.g. `yaml["presets"]["tiny"]`) plus overrides.

    Overrides are top-level keys (`use_global=False`), nested mappings merged into a section
    (`llm={"path": "models/llama"}`), or a section key written with a double underscore (`llm__path=...`).
    """
    extra: dict[str, Any] = {}
    for key, value in overrides.items():
        if "__" in key:
            section, sub = key.split("__", 1)
            extra = _deep_merge(extra, {section: {sub: value}})
        else:
            extra = _deep_merge(extra, {key: value})
    return Reg2RGConfig.from_dict(_deep_merge(mapping or {}, extra))


def load_preset(name: str, path=None, **overrides) -> Reg2RGConfig:
    """Read `presets.<name>` from the workflow config `path` (reg2rg.workflow_config.read_workflow_config; default
    config/config.yaml of the working directory, as `snakemake` reads it)."""
    from reg2rg.workflow_config import WORKFLOW_CONFIG, read_workflow_config

    data = read_workflow_config(path)
    path = path or WORKFLOW_CONFIG
    presets = data.get("presets", data)
    if name not in presets:
        raise ConfigError(f"{path}: no preset {name!r}; presets: {', '.join(sorted(presets))}")
    return config_from_preset(presets[name], **overrides)
