"""Hard-negative and debiased image-text objectives: focal contrastive (RO-ViT), DCL, HCL, HN-NCE,
NegCLIP and MoCHi.

Notation: x_i, y_i L2-normalised image/text embeddings of a batch of B pairs, s = 1/temperature,
l_ij = s x_i.y_j the image->text logits (text->image uses l^T), N = B-1 in-batch negatives.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from harness.core.batch import EmbeddingBatch, LossOutput
from harness.core.objective import DefaultSource, HParam, Objective, sources

#: the harness's convention for a learnable temperature when the source gives none (CLIP's init)
CLIP_TEMPERATURE = DefaultSource(
    "harness (CLIP's init, learnable and clamped to scale <= 100)",
    "CLIP: image-text pre-training from scratch",
    "n/a",
)
#: the regime of the DCL and HCL defaults
SIMCLR_STL = (
    "SimCLR on STL-10 (train + unlabeled) / CIFAR-10, ResNet-50 from scratch, batch 256, "
    "2 augmented views (N = 2B-2 negatives)"
)


def _temperature(default: float, learnable: bool, search=(0.01, 0.5, True)) -> dict[str, HParam]:
    return {
        "temperature": HParam(
            default,
            low=0.0,
            low_open=True,
            search=search,
            doc="initial temperature; logit scale = 1/temperature",
        ),
        "learnable_temperature": HParam(learnable, doc="optimise log(1/temperature) with the model"),
    }


class _Scaled(Objective):
    """Owns the logit scale s = 1/temperature (clamped to [1, 100] after each step if learnable)."""

    def __init__(self, **params):
        super().__init__(**params)
        self.scale = self.logit_scale()


def _logits(scale: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """s A B^T, in float32 when the embeddings are half precision (bf16 autocast): these losses sum
    exponentials and B^2 terms outside cross_entropy, which autocast would leave in bf16."""
    logits = scale * a @ b.T
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def _off_diagonal(n: int, device) -> torch.Tensor:
    return ~torch.eye(n, dtype=torch.bool, device=device)


def _negative_weights(logits: torch.Tensor, beta: float | None) -> torch.Tensor:
    """w_ij = N exp(beta l_ij) / sum_{k != i} exp(beta l_ik) for j != i, 0 on the diagonal
    (beta None or 0: exactly 1 off the diagonal). Not detached, as in the HCL and HN-NCE code."""
    off = _off_diagonal(logits.shape[0], logits.device)
    if not beta or logits.shape[0] < 2:  # B = 1: no negative to weight (a softmax over -inf is NaN)
        return off.to(logits.dtype)
    z = (beta * logits).masked_fill(~off, float("-inf"))
    return (logits.shape[0] - 1) * torch.softmax(z, dim=1)


def debiased_nll(
    logits: torch.Tensor, scale: torch.Tensor, tau_plus: float, beta: float | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row DCL/HCL loss -log(pos / (pos + Ng)) of a square logit matrix (positives on the
    diagonal), Ng = max((sum_j w_ij e^{l_ij} - tau+ N pos) / (1 - tau+), N e^{-s}); returns the
    losses and a 0/1 mask of the rows where the lower bound is active. Computed relative to the row
    maximum m_i (the loss is invariant to it), so no exp overflows at any temperature."""
    n = logits.shape[0]
    m = logits.detach().max(dim=1).values
    e = torch.exp(logits - m[:, None])
    pos = e.diagonal()
    neg = (_negative_weights(logits, beta) * e).sum(dim=1)
    ng = (neg - tau_plus * (n - 1) * pos) / (1.0 - tau_plus)
    bound = (n - 1) * torch.exp(-scale - m)
    clamped = ng < bound
    ng = torch.maximum(ng, bound)
    return torch.log(pos + ng) - (logits.diagonal() - m), clamped


class Focal(_Scaled):
    """Focal contrastive loss of RO-ViT (Kim, Angelova, Kuo 2023, "Region-Aware Pretraining for
    Open-Vocabulary Object Detection with Vision Transformers"), the sigmoid focal form over all B^2
    image-text pairs of the official ``rovit/focal_contrastive_loss.py``:

        p_ij = sigmoid(l_ij) if i = j else 1 - sigmoid(l_ij)          (true-class probability)
        w_ij = 2 alpha if i = j else 2 (1 - alpha)
        L    = -1/B sum_i sum_j w_ij (1 - p_ij)^gamma log p_ij

    Official defaults gamma = 1.0, alpha = 0.5 (so w = 1). The logits carry no bias (RO-ViT
    replaces the softmax cross entropy by focal loss on the same similarity logits); the
    temperature is learnable from CLIP's 0.07 and clamped to s <= 100 (the paper's initial value
    was not found; this is the harness's CLIP convention). gamma = 0 with alpha = 0.5 is exactly
    SigLIP with bias 0. Symmetric by construction: the text->image problem is the same set of B^2
    binary problems, so (L_I2T + L_T2I)/2 = L_I2T.

    Distributed: global (every image against every gathered text).
    """

    family = "hard-negative"
    citation = (
        "Kim, Angelova, Kuo 2023, Region-Aware Pretraining for Open-Vocabulary Object "
        "Detection with Vision Transformers"
    )
    requires = frozenset({"image", "text"})
    distributed = "global"
    hparams = {
        **_temperature(0.07, True),
        "gamma": HParam(1.0, low=0.0, search=(0.0, 3.0, False), doc="focusing exponent"),
        "alpha": HParam(
            0.5,
            low=0.0,
            high=1.0,
            search=(0.25, 0.75, False),
            doc="positive/negative balance (0.5: equal weights)",
        ),
    }
    defaults_source = {
        **sources(
            "temperature learnable_temperature",
            DefaultSource(
                "harness (CLIP's 0.07, learnable)",
                "RO-ViT image-text pre-training from scratch",
                "n/a",
                "the paper's initial temperature was not found",
            ),
        ),
        **sources(
            "gamma alpha",
            DefaultSource(
                "official code rovit/focal_contrastive_loss.py",
                "RO-ViT image-text pre-training from scratch (batch not recorded)",
                "no",
            ),
        ),
    }

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        s = self.scale()
        logits = _logits(s, batch.image, batch.text)
        n = logits.shape[0]
        eye = torch.eye(n, dtype=torch.bool, device=logits.device)
        zl = torch.where(eye, logits, -logits)  # log p = logsigmoid(zl), 1 - p = sigmoid(-zl)
        p = self.params
        modulator = torch.exp(p["gamma"] * F.logsigmoid(-zl))
        weight = torch.where(eye, logits.new_tensor(2 * p["alpha"]), logits.new_tensor(2 * (1 - p["alpha"])))
        loss = -(weight * modulator * F.logsigmoid(zl)).sum() / n
        return LossOutput(loss, {"temperature": 1.0 / s.detach()})


class DCL(_Scaled):
    """Debiased Contrastive Learning (Chuang et al. 2020, "Debiased Contrastive Learning"), the
    estimator of the official ``chingyaoc/DCL`` code applied to image-text pairs:

        pos_i = e^{l_ii},  Ng_i = max( (sum_{j != i} e^{l_ij} - tau+ N pos_i) / (1 - tau+), N e^{-s} )
        L     = 1/2 [ mean_i -log(pos_i / (pos_i + Ng_i))  +  the same over l^T ]

    Variant: symmetric (image->text and text->image averaged); the negatives of image i are the
    other B-1 texts of the batch (N = B-1, not SimCLR's 2B-2 same-view pairs); N e^{-1/t} is the
    smallest value the negative term can take with unit vectors (every cosine -1). tau+ = 0 is
    exactly InfoNCE (the bound never binds). Paper defaults: t = 0.5 (fixed), tau+ = 0.1.
    Logged: ``clamped``, the fraction of rows where the lower bound is active.

    Distributed: global (N counts the gathered batch).
    """

    family = "debiased"
    citation = "Chuang et al. 2020, Debiased Contrastive Learning"
    requires = frozenset({"image", "text"})
    distributed = "global"
    hparams = {
        **_temperature(0.5, False, search=(0.05, 1.0, True)),
        "tau_plus": HParam(
            0.1,
            low=0.0,
            high=1.0,
            high_open=True,
            search=(0.0, 0.2, False),
            doc="class prior: probability that an in-batch negative is a positive",
        ),
    }
    defaults_source = {
        **sources(
            "temperature learnable_temperature",
            DefaultSource(
                "official code chingyaoc/DCL main.py (t = 0.5, fixed)",
                SIMCLR_STL,
                "yes",
                "here image-text with N = B-1 negatives (not 2B-2); 0.5 suits SimCLR's image "
                "setting, CLIP's init is 0.07",
            ),
        ),
        "tau_plus": DefaultSource(
            "official code chingyaoc/DCL (README: tau+ = 0.1 best on STL-10)",
            SIMCLR_STL,
            "yes",
            "a class prior: 0.1 fits ~10 balanced classes (STL-10, CIFAR-10); the shapes world "
            "or image-text data has another",
        ),
    }

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        s = self.scale()
        logits = _logits(s, batch.image, batch.text)
        tau, beta = self.params["tau_plus"], self.params.get("beta")
        li, ci = debiased_nll(logits, s, tau, beta)
        lt, ct = debiased_nll(logits.T, s, tau, beta)
        loss = (li.mean() + lt.mean()) / 2
        clamped = torch.cat([ci, ct]).to(logits.dtype).mean().detach()
        return LossOutput(loss, {"temperature": 1.0 / s.detach(), "clamped": clamped})


class HCL(DCL):
    """Hard-negative contrastive learning (Robinson et al. 2021, "Contrastive Learning with Hard
    Negative Samples"), the official ``joshr17/HCL`` estimator on image-text pairs: DCL with every
    negative importance-weighted by its hardness,

        w_ij = N e^{beta l_ij} / sum_{k != i} e^{beta l_ik}
        Ng_i = max( (sum_{j != i} w_ij e^{l_ij} - tau+ N pos_i) / (1 - tau+), N e^{-s} )

    (the code's ``imp = exp(beta * sim / t)``, ``reweight_neg = (imp * neg).sum / imp.mean``; the
    weights are not detached, as in the code). Symmetric, N = B-1 as in ``dcl``; beta = 0 is
    exactly ``dcl``. Paper defaults: t = 0.5 (fixed), tau+ = 0.1, beta = 1.0. At B = 1 there is no
    negative to weight: the loss is 0, as ``dcl``'s and ``clip``'s.

    Distributed: global (N and the weights span the gathered batch).
    """

    citation = "Robinson et al. 2021, Contrastive Learning with Hard Negative Samples"
    hparams = {
        **DCL.hparams,
        "beta": HParam(1.0, low=0.0, search=(0.0, 2.0, False), doc="hardness concentration"),
    }
    defaults_source = {
        **sources(
            "temperature learnable_temperature tau_plus",
            DefaultSource("official code joshr17/HCL image/main.py", SIMCLR_STL + ", 400 epochs", "yes"),
        ),
        "beta": DefaultSource(
            "official code joshr17/HCL (README: beta 1.0 best of 0, 0.5, 1, 2, 6 on STL-10)",
            SIMCLR_STL + ", 400 epochs",
            "yes",
        ),
    }


class HNNCE(_Scaled):
    """HN-NCE (Radenovic et al. 2023, "Filtering, Distillation, and Hard Negatives for
    Vision-Language Pre-Training"): InfoNCE whose negatives are importance-weighted by hardness and
    whose positive enters the denominator with weight alpha,

        w_ij  = N e^{beta1 l_ij} / sum_{k != i} e^{beta1 l_ik}       (j != i; beta2 for text->image)
        L_I2T = mean_i -log( e^{l_ii} / (alpha e^{l_ii} + sum_{j != i} w_ij e^{l_ij}) )
        L     = (L_I2T + L_T2I) / 2

    as in the public re-implementations (weights on the scaled logits, not detached). The paper
    sums the two directions; they are averaged here so that alpha = 1, beta1 = beta2 = 0 is exactly
    ``clip``. Defaults alpha = 1, beta1 = beta2 = 0.5: recalled from the paper, not verified (the
    official repository does not publish the loss). Temperature learnable as CLIP (DiHT trains a
    CLIP model). alpha = 0 needs B >= 2 (``min_batch_size``): one pair leaves an empty denominator.

    Distributed: global (N and the weights span the gathered batch).
    """

    family = "hard-negative"
    citation = (
        "Radenovic et al. 2023, Filtering, Distillation, and Hard Negatives for Vision-Language Pre-Training"
    )
    requires = frozenset({"image", "text"})
    distributed = "global"

    @property
    def min_batch_size(self) -> int:
        """2 when alpha = 0: a batch of one then has an empty denominator (the loss is -inf)."""
        return 2 if self.params["alpha"] == 0 else 1

    hparams = {
        **_temperature(0.07, True),
        "alpha": HParam(
            1.0,
            low=0.0,
            high=1.0,
            search=(0.0, 1.0, False),
            doc="weight of the positive in the denominator (0: decoupled)",
        ),
        "beta1": HParam(0.5, low=0.0, search=(0.0, 1.0, False), doc="hardness, image->text"),
        "beta2": HParam(0.5, low=0.0, search=(0.0, 1.0, False), doc="hardness, text->image"),
    }
    defaults_source = {
        **sources("temperature learnable_temperature", CLIP_TEMPERATURE),
        **sources(
            "alpha beta1 beta2",
            DefaultSource(
                "paper (recalled; the official repository does not publish the loss)",
                "DiHT: CLIP pre-training from scratch on filtered LAION (batch not recorded)",
                "no",
            ),
        ),
    }
    defaults_note = (
        "Scale: the two directions are averaged, (L_I2T + L_T2I)/2, so that alpha = 1, beta = 0 is "
        "exactly clip; a public re-implementation (and the paper, as the docstring reads it) sums "
        "them. hn-nce's loss is therefore half the summed one: in a weighted sum such as "
        "`hn-nce + 0.1*tic` the other term weighs twice as much, relative to hn-nce, as the same "
        "weight beside the summed loss; `2*hn-nce + 0.1*tic` reproduces the summed convention. "
        "The loss itself is unchanged (version 1)."
    )

    def _nll(self, logits: torch.Tensor, beta: float) -> torch.Tensor:
        n = logits.shape[0]
        off = _off_diagonal(n, logits.device)
        log_w = torch.zeros_like(logits)  # log w_ij, in log space (no log(0) in the graph)
        if beta:
            z = (beta * logits).masked_fill(~off, float("-inf"))
            log_w = math.log(max(n - 1, 1)) + torch.log_softmax(z, dim=1)
        alpha = self.params["alpha"]
        log_alpha = torch.tensor(
            math.log(alpha) if alpha > 0 else float("-inf"), dtype=logits.dtype, device=logits.device
        )
        log_w = torch.where(off, log_w, log_alpha)
        return torch.logsumexp(logits + log_w, dim=1) - logits.diagonal()

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        n = batch.image.shape[0]
        if n < self.min_batch_size:
            raise ValueError(
                f"hn-nce with alpha = 0 needs a batch of at least 2 pairs, got {n}: the "
                "positive leaves the denominator and a batch of one has no negative (the loss "
                "is -inf); set budget.batch_size >= 2 or alpha > 0"
            )
        s = self.scale()
        logits = _logits(s, batch.image, batch.text)
        p = self.params
        loss = (self._nll(logits, p["beta1"]).mean() + self._nll(logits.T, p["beta2"]).mean()) / 2
        return LossOutput(loss, {"temperature": 1.0 / s.detach()})


class NegCLIP(_Scaled):
    """NegCLIP (Yuksekgonul et al. 2023, "When and Why Vision-Language Models Behave like
    Bags-of-Words, and What to Do About It?") with generated hard-negative captions as in Rösch et
    al. 2024, "Enhancing Conceptual Understanding in Multimodal Contrastive Learning through Hard
    Negative Samples": the image->text softmax runs over the B captions plus the k hard negatives
    of every sample of the batch (h_bm, B k extra columns); text->image stays standard:

        L = 1/2 [ mean_i -log( e^{l_ii} / (sum_j e^{l_ij} + sum_{b,m} e^{s x_i.h_bm}) )
                  + CE(s Y X^T, I) ]

    Variant: hard-negative captions only (NegCLIP also adds nearest-neighbour hard-negative images,
    which the shapes world does not provide). k = 0 is exactly ``clip``. Temperature learnable from
    0.07 as CLIP (NegCLIP fine-tunes CLIP). Logged: ``hard_negative_accuracy``, the fraction of
    images whose caption scores above all of its own hard negatives.

    Distributed: global (the gathered captions and hard negatives are every image's candidates).
    """

    family = "hard-negative"
    citation = (
        "Yuksekgonul et al. 2023, When and Why Vision-Language Models Behave like "
        "Bags-of-Words, and What to Do About It?"
    )
    requires = frozenset({"image", "text", "hard_negative_text"})
    distributed = "global"
    hparams = {**_temperature(0.07, True)}
    defaults_source = sources(
        "temperature learnable_temperature",
        DefaultSource(
            "harness (CLIP's from-scratch init, learnable)",
            "NegCLIP fine-tunes pretrained OpenAI CLIP ViT-B/32 on COCO with hard negatives, "
            "batch 256, lr 1e-6, 5 epochs, starting from the pretrained scale (about 100, "
            "temperature 0.01)",
            "n/a",
            "the harness trains from scratch, so it starts from CLIP's init rather than the pretrained scale",
        ),
    )

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        s = self.scale()
        x, y, h = batch.image, batch.text, batch.hard_negative_text
        n = x.shape[0]
        target = torch.arange(n, device=x.device)
        i2t = s * x @ torch.cat([y, h.reshape(-1, y.shape[1])]).T
        loss = (F.cross_entropy(i2t, target) + F.cross_entropy(s * y @ x.T, target)) / 2
        logs = {"temperature": 1.0 / s.detach()}
        if h.shape[1] > 0:
            own = torch.einsum("bd,bkd->bk", x, h)
            logs["hard_negative_accuracy"] = ((x * y).sum(1) > own.max(1).values).float().mean().detach()
        return LossOutput(loss, logs)


def mochi_logits(q: torch.Tensor, k: torch.Tensor, hard: torch.Tensor, ia, ib, a, ic, b):
    """Cosines q_i.h of MoCHi's synthetic negatives, h detached, without materialising h.

    ``hard`` (B, n) holds the indices (into ``k``) of each query's hardest negatives; ia, ib, ic
    index into it. Type 1 (B, s): h = normalize(a k_ia + (1-a) k_ib); type 2 (B, s'): h' =
    normalize(b q + (1-b) k_ic). q.h = (mix of q.k)/||mix||, with ||mix||^2 from the Gram matrix.
    """
    kd, qd = k.detach(), q.detach()
    qk = q @ kd.T  # gradient reaches the query only
    gram = kd @ kd.T
    sq = gram.diagonal()
    na, nb, nc = hard.gather(1, ia), hard.gather(1, ib), hard.gather(1, ic)
    num1 = a * qk.gather(1, na) + (1 - a) * qk.gather(1, nb)
    norm1 = a**2 * sq[na] + (1 - a) ** 2 * sq[nb] + 2 * a * (1 - a) * gram[na, nb]
    qq = (q * qd).sum(1, keepdim=True)
    num2 = b * qq + (1 - b) * qk.gather(1, nc)
    norm2 = b**2 * qq.detach() + (1 - b) ** 2 * sq[nc] + 2 * b * (1 - b) * qk.detach().gather(1, nc)
    return num1 / norm1.clamp_min(1e-24).sqrt(), num2 / norm2.clamp_min(1e-24).sqrt()


class MoCHi(_Scaled):
    """Hard negative mixing (Kalantidis et al. 2020, "Hard Negative Mixing for Contrastive
    Learning"), adapted to in-batch image-text InfoNCE (no queue, no momentum encoder).

    For each query q (an image; and, symmetrically, each text) the n = min(n_hard, B-1) in-batch
    negatives of the other modality with the highest q.k form Q_n. MoCHi adds s synthetic
    negatives h = normalize(a k_i + (1-a) k_j), k_i, k_j drawn uniformly from Q_n, a ~ U(0, 1), and
    s' harder ones h' = normalize(b q + (1-b) k_j), b ~ U(0, 0.5); every h is detached (gradient
    flows through q only) and its logit s q.h is appended to the query's denominator:

        L = 1/2 [ CE([l_i., s q_i.h_i1..], i) over images + the same over texts ]

    Defaults MoCHi(N, s, s') = (1024, 512, 256), recalled from the paper's ImageNet-1K table (not
    verified); N is clipped to B-1, so with small batches the synthetic negatives outnumber the
    real ones (the paper adds them to a 16k queue): tune s, s' there. No mixing warm-up. s = s' = 0
    is exactly ``clip``. Draws come from a torch.Generator seeded by (seed, step), the step counted
    in ``after_step`` and saved with the state dict, so runs are reproducible.

    Distributed: global (Q_n is chosen from the gathered batch; every rank draws the same mixing).
    """

    family = "hard-negative"
    citation = "Kalantidis et al. 2020, Hard Negative Mixing for Contrastive Learning"
    requires = frozenset({"image", "text"})
    distributed = "global"
    hparams = {
        **_temperature(0.07, True),
        "n_hard": HParam(1024, low=1, doc="hardest negatives mixed per query (clipped to B-1)"),
        "s": HParam(512, low=0, doc="type-1 synthetic negatives per query"),
        "s_prime": HParam(256, low=0, doc="type-2 (query-mixed) synthetic negatives per query"),
        "seed": HParam(0, low=0, doc="seed of the mixing draws"),
    }
    _moco = "MoCo v2 on ImageNet-1K, ResNet-50 from scratch, batch 256, 2 views, 16k-65k queue"
    defaults_source = {
        **sources(
            "temperature learnable_temperature",
            DefaultSource(
                "MoCo's T = 0.07 (fixed there); learnable: harness (CLIP convention)",
                _moco,
                "partly",
                "0.07 checked against a faithful re-implementation, not the paper",
            ),
        ),
        **sources(
            "n_hard s s_prime",
            DefaultSource(
                "paper, MoCHi(1024, 512, 256) (recalled from the ImageNet-1K table)",
                _moco,
                "no",
                "the paper mixes into a 16k queue; here N is clipped to B-1",
            ),
        ),
        "seed": DefaultSource("harness", "reproducible mixing draws", "n/a"),
    }

    def __init__(self, **params):
        super().__init__(**params)
        self.step = 0

    def draw(self, g: torch.Generator, n_query: int, n_hard: int, device):
        """(ia, ib, a, ic, b): positions in each query's hardest list and mixing coefficients."""
        s, s2 = self.params["s"], self.params["s_prime"]
        out = (
            torch.randint(n_hard, (n_query, s), generator=g),
            torch.randint(n_hard, (n_query, s), generator=g),
            torch.rand(n_query, s, generator=g),
            torch.randint(n_hard, (n_query, s2), generator=g),
            0.5 * torch.rand(n_query, s2, generator=g),
        )
        return tuple(t.to(device) for t in out)

    def _direction(self, q, k, scale, g) -> torch.Tensor:
        n = q.shape[0]
        sim = q @ k.T
        target = torch.arange(n, device=q.device)
        n_hard = min(self.params["n_hard"], n - 1)
        if n_hard < 1 or self.params["s"] + self.params["s_prime"] == 0:
            return F.cross_entropy(scale * sim, target)
        off = _off_diagonal(n, q.device)
        hard = sim.detach().masked_fill(~off, float("-inf")).topk(n_hard, dim=1).indices
        ia, ib, a, ic, b = (
            t.to(sim.dtype) if t.is_floating_point() else t for t in self.draw(g, n, n_hard, q.device)
        )
        h1, h2 = mochi_logits(q, k, hard, ia, ib, a, ic, b)
        return F.cross_entropy(scale * torch.cat([sim, h1, h2], dim=1), target)

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        s = self.scale()
        g = torch.Generator().manual_seed(int(self.params["seed"]) * 1_000_003 + self.step)
        loss = (
            self._direction(batch.image, batch.text, s, g) + self._direction(batch.text, batch.image, s, g)
        ) / 2
        return LossOutput(loss, {"temperature": 1.0 / s.detach()})

    def after_step(self) -> None:
        super().after_step()
        self.step += 1

    def get_extra_state(self):
        return {"step": self.step}

    def set_extra_state(self, state) -> None:
        self.step = int(state["step"])

    @classmethod
    def search_space(cls, trial) -> dict:
        out = super().search_space(trial)  # the temperature
        out["n_hard"] = trial.suggest_int("n_hard", 4, 1024, log=True)
        out["s"] = trial.suggest_int("s", 0, 1024)
        out["s_prime"] = trial.suggest_int("s_prime", 0, 512)
        return out
