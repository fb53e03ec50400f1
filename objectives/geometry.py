"""Geometry-regularising objectives: alignment/uniformity, CUA, dispersive loss, Kernel-InfoNCE."""

from __future__ import annotations

import math

import torch

from harness.core.batch import EmbeddingBatch, LossOutput
from harness.core.objective import DefaultSource, HParam, Objective, sources

from .infonce import symmetric_ce


def sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(n, m) squared Euclidean distances ||a_i - b_j||^2 from the Gram matrix (no sqrt, so the
    gradient stays finite for coincident points; clamped at 0 against round-off)."""
    return ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a @ b.T).clamp_min(0)


def uniformity(z: torch.Tensor, t: float) -> torch.Tensor:
    """Wang & Isola's L_unif = log mean_{i<j} exp(-t ||z_i - z_j||^2): the official
    ``torch.pdist(z).pow(2).mul(-t).exp().mean().log()`` (self-pairs excluded), as a logsumexp."""
    n = z.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=z.device)
    d2 = sq_dists(z, z)[iu[0], iu[1]]
    return torch.logsumexp(-t * d2, 0) - math.log(d2.numel())


def _need_pairs(name: str, n: int) -> None:
    if n < 2:
        raise ValueError(
            f"{name} needs a batch of at least 2 pairs, got {n}: uniformity is a mean over "
            "pairs of samples; set budget.batch_size >= 2"
        )


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float) -> torch.Tensor:
    """L_align = mean_i ||x_i - y_i||_2^alpha (official ``(x - y).norm(dim=1).pow(alpha).mean()``)."""
    return (x - y).pow(2).sum(1).pow(alpha / 2).mean()


class AlignUniform(Objective):
    """Alignment + uniformity on the hypersphere (Wang & Isola, ICML 2020, "Understanding
    Contrastive Representation Learning through Alignment and Uniformity on the Hypersphere").

        L = w_align * mean_i ||x_i - y_i||^alpha + w_unif * (L_unif(x) + L_unif(y)) / 2
        L_unif(z) = log mean_{i != j} exp(-t ||z_i - z_j||^2)

    with x the image and y the text embeddings (already L2-normalised); ``pairs="text"`` takes
    x = text, y = text_view instead (text tower only: the sentence-embedding form, whose analysis
    SimCSE reports in its Fig. 3). This is the official
    ``SsnL/align_uniform`` recipe (``align_loss`` + the average of ``uniform_loss`` over both
    sides; ``torch.pdist`` excludes self-pairs); paper defaults alpha = 2, t = 2, both weights 1.
    The loss is symmetric in image and text by construction. It works alone or as a regulariser
    term, e.g. ``clip + 0.1*align-uniform``. Uniformity is computed from the Gram matrix as a
    logsumexp (numerically equal to the pdist form, finite gradients for coincident points).
    Needs B >= 2 (uniformity is a mean over pairs).

    Distributed: global (the uniformity terms are meant over the whole gathered batch).
    """

    family = "geometry"
    citation = (
        "Wang & Isola 2020, Understanding Contrastive Representation Learning through "
        "Alignment and Uniformity on the Hypersphere"
    )
    distributed = "global"
    min_batch_size = 2
    hparams = {
        "alpha": HParam(2.0, low=0.0, low_open=True, doc="exponent of the alignment distance"),
        "t": HParam(2.0, low=0.0, low_open=True, search=(0.5, 5.0, True), doc="uniformity kernel scale"),
        "align_weight": HParam(1.0, low=0.0, search=(0.25, 4.0, True)),
        "uniform_weight": HParam(1.0, low=0.0, search=(0.25, 4.0, True)),
        "pairs": HParam(
            "image-text",
            choices=("image-text", "text"),
            tunable=False,
            doc="positive pairs: (image, text), or (text, text_view) on the text tower alone",
        ),
    }
    _stl = (
        "STL-10, AlexNet variant from scratch, batch 768, 2 augmented views, feature dim 128 "
        "(official example, 83.19% linear accuracy)"
    )
    defaults_source = {
        **sources(
            "alpha t",
            DefaultSource(
                "official code SsnL/align_uniform (align_loss alpha=2, uniform_loss t=2); paper",
                _stl,
                "yes",
            ),
        ),
        **sources(
            "align_weight uniform_weight",
            DefaultSource(
                "official code SsnL/align_uniform (STL-10 example: 1 * align + 1 * mean uniform)",
                _stl,
                "yes",
            ),
        ),
        "pairs": DefaultSource("harness", "structural switch (which pairs, which tower)", "n/a"),
    }

    @property
    def requires(self):  # type: ignore[override]
        return (
            frozenset({"image", "text"})
            if self.params["pairs"] == "image-text"
            else frozenset({"text", "text_view"})
        )

    @property
    def modality(self):  # type: ignore[override]
        return self.params["pairs"]

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        p = self.params
        x, y = (batch.image, batch.text) if p["pairs"] == "image-text" else (batch.text, batch.text_view)
        _need_pairs(self.name, x.shape[0])
        align = alignment(x, y, p["alpha"])
        unif = (uniformity(x, p["t"]) + uniformity(y, p["t"])) / 2
        loss = p["align_weight"] * align + p["uniform_weight"] * unif
        return LossOutput(loss, {"align": align.detach(), "uniformity": unif.detach()})


class CUA(Objective):
    """CLIP + uniformity + alignment (Fahim, Murphy & Fyshe 2024, "It's Not a Modality Gap:
    Characterizing and Addressing the Contrastive Gap").

        L_CUA = L_CLIP(tau) + w_u * (L_unif(x) + L_unif(y)) / 2 + w_a * mean_i ||x_i - y_i||^2
                [+ w_x * L_XUnif],   L_XUnif = log mean_{j != k} exp(-t ||x_j - y_k||^2)

    with the Wang-Isola uniformity L_unif (t = 2, self-pairs excluded). This follows the
    authors' code (``compute_CUA_loss``: clip + multimodal uniform + align, all weights 1;
    ``compute_CUAXU_loss`` adds the cross-modal uniformity): w_u = w_a = 1 and w_x = 0 give
    L_CUA, w_x = 1 gives L_CUAXU. Paper defaults: t = 2, alpha = 2, temperature fixed at 0.01
    (the paper fine-tunes CLIP with tau = 0.01 not learned); ``learnable_temperature=true``
    gives CLIP's learnable, clamped scale instead. With w_u = w_a = w_x = 0 it is exactly
    ``clip``. Symmetric: the CLIP term averages image->text and text->image. Needs B >= 2
    (uniformity is a mean over pairs).

    Distributed: global (CLIP negatives and the uniformity terms span the gathered batch).
    """

    family = "geometry"
    citation = (
        "Fahim, Murphy & Fyshe 2024, It's Not a Modality Gap: Characterizing and "
        "Addressing the Contrastive Gap"
    )
    requires = frozenset({"image", "text"})
    distributed = "global"
    min_batch_size = 2
    hparams = {
        "temperature": HParam(
            0.01, low=0.0, low_open=True, search=(0.01, 0.1, True), doc="CLIP temperature (paper: fixed 0.01)"
        ),
        "learnable_temperature": HParam(False),
        "uniform_weight": HParam(1.0, low=0.0, search=(0.1, 3.0, True)),
        "align_weight": HParam(1.0, low=0.0, search=(0.1, 3.0, True)),
        "xuniform_weight": HParam(0.0, low=0.0, doc="cross-modal uniformity (1 = L_CUAXU)"),
        "t": HParam(2.0, low=0.0, low_open=True),
        "alpha": HParam(2.0, low=0.0, low_open=True),
    }
    _ft = (
        "fine-tuning pretrained OpenAI CLIP ViT-B/32 (projection re-initialised to d 32-128) on "
        "COCO, batch 64, 9 epochs, lr 1e-6"
    )
    defaults_source = {
        **sources(
            "temperature learnable_temperature",
            DefaultSource(
                "paper (tau = 0.01, not learned)",
                _ft,
                "partly",
                "checked against a detailed secondary note of the paper; 0.01 is the pretrained "
                "CLIP's final scale (100), chosen for fine-tuning, not for training from scratch",
            ),
        ),
        **sources(
            "uniform_weight align_weight xuniform_weight",
            DefaultSource(
                "authors' code (compute_CUA_loss: all weights 1; CUAXU adds xuniform)",
                _ft,
                "partly",
                "the formula checked against a secondary note; the code not read",
            ),
        ),
        **sources(
            "t alpha",
            DefaultSource("paper (Wang-Isola uniformity t = 2; alignment squared)", _ft, "partly"),
        ),
    }

    def __init__(self, **params):
        super().__init__(**params)
        self.scale = self.logit_scale()

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        p = self.params
        x, y = batch.image, batch.text
        _need_pairs(self.name, x.shape[0])
        s = self.scale()
        contrastive = symmetric_ce(s * x @ y.T)
        unif = (uniformity(x, p["t"]) + uniformity(y, p["t"])) / 2
        align = alignment(x, y, p["alpha"])
        loss = contrastive + p["uniform_weight"] * unif + p["align_weight"] * align
        logs = {
            "clip": contrastive.detach(),
            "uniformity": unif.detach(),
            "align": align.detach(),
            "temperature": 1.0 / s.detach(),
        }
        if p["xuniform_weight"] > 0:
            n = x.shape[0]
            off = ~torch.eye(n, dtype=torch.bool, device=x.device)
            d2 = sq_dists(x, y)[off]
            xunif = torch.logsumexp(-p["t"] * d2, 0) - math.log(d2.numel())
            loss = loss + p["xuniform_weight"] * xunif
            logs["xuniformity"] = xunif.detach()
        return LossOutput(loss, logs)


class Dispersive(Objective):
    """Dispersive loss as a regulariser term (Wang & He 2025, "Diffuse and Disperse: Image
    Generation with Representation Regularization").

    The InfoNCE-L2 variant, "InfoNCE without positives", on each modality:

        L_disp(Z) = log mean_{i,j} exp(-||z_i - z_j||^2 / tau),   L = (L_disp(X) + L_disp(Y)) / 2

    The official code (``raywang4/DispLoss``, ``disp_loss``) averages over the full B x B matrix,
    diagonal (distance 0) included, "to match the JAX implementation"; ``include_self=false``
    averages over i != j only (the pdist form). The official code divides the squared distance
    of raw flattened activations by their dimension instead of using tau; here the embeddings are
    already L2-normalised, so we use the paper's temperature form with tau = 0.5. In the paper
    the regulariser is added to the main loss with weight lambda (0.5 in the official code:
    ``loss += 0.5 * disp_loss``); here that weight is the expression weight, so the paper's
    recipe is ``clip + 0.5*dispersive`` (``dispersive`` alone only spreads the embeddings apart).
    Self-distances are exactly 0: the Gram-matrix form leaves float32 rounding there, whose
    gradient dominated the true one at small tau. ``include_self=false`` needs B >= 2.

    Distributed: global (the pairwise repulsion is meant over the whole gathered batch).
    """

    #: 2: self-distances exactly 0 (they came out ~1e-7 and moved the float32 gradient by 1%)
    version = "2"
    family = "geometry"
    citation = "Wang & He 2025, Diffuse and Disperse: Image Generation with Representation Regularization"
    requires = frozenset({"image", "text"})
    distributed = "global"
    hparams = {
        "temperature": HParam(0.5, low=0.0, low_open=True, search=(0.1, 2.0, True)),
        "include_self": HParam(True, doc="average over all B^2 pairs, i = j included (official code)"),
    }
    _gen = "diffusion/flow image generation (SiT/DiT on ImageNet 256) from scratch, on activations"
    defaults_source = {
        "temperature": DefaultSource(
            "harness (the paper's temperature form)",
            "L2-normalised embeddings",
            "n/a",
            "the official code divides squared distances of raw activations by their dimension",
        ),
        "include_self": DefaultSource("official code raywang4/DispLoss (disp_loss)", _gen, "no"),
    }

    @property
    def min_batch_size(self) -> int:
        """2 without self-pairs: one sample has no pair to average over."""
        return 1 if self.params["include_self"] else 2

    def _disp(self, z: torch.Tensor) -> torch.Tensor:
        eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
        d2 = sq_dists(z, z).masked_fill(eye, 0.0)  # exactly 0: the Gram form leaves rounding there
        if not self.params["include_self"]:
            d2 = d2[~eye]
        d2 = d2.reshape(-1)
        return torch.logsumexp(-d2 / self.params["temperature"], 0) - math.log(d2.numel())

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        n = batch.image.shape[0]
        if n < self.min_batch_size:
            raise ValueError(
                f"dispersive with include_self=false needs a batch of at least 2, got {n}: the "
                "mean is over pairs i != j; set budget.batch_size >= 2 or include_self=true"
            )
        di, dt = self._disp(batch.image), self._disp(batch.text)
        return LossOutput((di + dt) / 2, {"image": di.detach(), "text": dt.detach()})


class KernelInfoNCE(Objective):
    """Kernel-InfoNCE (Tan, Zhang, Yang & Yuan, ICLR 2024, "Contrastive Learning Is Spectral
    Clustering On Similarity Graph"), symmetric over image-text.

    InfoNCE with the kernel k_gamma(x, y) = exp(-||x - y||^gamma / tau) in place of the Gaussian
    exp(-||x - y||^2 / tau) (= CLIP's exp(x.y / (tau/2)) up to a constant on unit vectors):

        L_gamma = 1/2 [ CE(-D^gamma / tau, I) + CE(-(D^gamma)^T / tau, I) ],  D_ij = ||x_i - y_j||
        L = lam * L_gamma + (1 - lam) * L_2

    This is the official code's mixture (``loss_type="sum"``: ``gamma_loss(gamma) * gamma_lambd
    + gamma_loss(2) * (1 - gamma_lambd)``), i.e. a Laplacian-type kernel mixed with the Gaussian
    one. Defaults: tau = 0.1 (code default), gamma = 1 (Laplacian; the authors search gamma in
    {0.5, 1}), lam = 0.5 (our choice: the authors' random search draws lam ~ U(0, 1) and the
    per-dataset optima are not retrievable here). The temperature is fixed, as in the paper.
    lam = 0 reduces to CLIP at temperature tau/2 (constant logit shift).

    Distributed: global (the kernel matrix spans the gathered batch, as the official SyncFunction).
    """

    family = "geometry"
    citation = "Tan, Zhang, Yang & Yuan 2024, Contrastive Learning Is Spectral Clustering On Similarity Graph"
    requires = frozenset({"image", "text"})
    distributed = "global"
    hparams = {
        "temperature": HParam(
            0.1,
            low=0.0,
            low_open=True,
            search=(0.02, 1.0, True),
            doc="kernel bandwidth tau in exp(-||x-y||^gamma / tau)",
        ),
        "gamma": HParam(1.0, low=0.0, high=2.0, low_open=True, search=(0.5, 1.5, False)),
        "mix": HParam(
            0.5,
            low=0.0,
            high=1.0,
            search=(0.0, 1.0, False),
            doc="weight lam of the gamma-kernel loss; 1 - lam goes to the Gaussian one",
        ),
    }
    _ssl = "SimCLR-style self-supervised image pre-training from scratch, 2 augmented views"
    defaults_source = {
        "temperature": DefaultSource("official code (default tau 0.1)", _ssl, "no"),
        "gamma": DefaultSource("paper (the authors search gamma in {0.5, 1})", _ssl, "no"),
        "mix": DefaultSource("harness", _ssl, "n/a", "the authors draw lam ~ U(0, 1) in a random search"),
    }

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        p = self.params
        d2 = sq_dists(batch.image, batch.text)
        gauss = symmetric_ce(-d2 / p["temperature"])
        if p["mix"] == 0:
            return LossOutput(gauss, {"gaussian": gauss.detach()})
        kern = symmetric_ce(-d2.clamp_min(1e-12).pow(p["gamma"] / 2) / p["temperature"])
        loss = p["mix"] * kern + (1 - p["mix"]) * gauss
        return LossOutput(loss, {"gamma_kernel": kern.detach(), "gaussian": gauss.detach()})
