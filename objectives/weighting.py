"""Weighting and temperature-individualising objectives: soft targets (CWCL), per-sample
temperatures (iSogCLR), an alignment-adaptive temperature (MACL) and multi-head temperatures
(AMCL)."""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.lazy import LazyModuleMixin
from torch.nn.parameter import UninitializedParameter

from harness.core.batch import EmbeddingBatch, LossOutput
from harness.core.objective import DefaultSource, HParam, HyperparameterError, Objective, sources

from .infonce import symmetric_ce


def _soft_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over rows of -sum_j target_ij log softmax(logits)_ij (rows of target sum to 1)."""
    return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()


class CWCL(Objective):
    """Continuously Weighted Contrastive Loss (Srinivasa et al., NeurIPS 2023, "CWCL: Cross-Modal
    Transfer with Continuously Weighted Contrastive Loss").

    The U->V direction replaces CLIP's one-hot target with soft targets from the intra-modal
    similarity of the (pretrained, frozen) modality U, with anchors p_i from U and candidates q_j
    from V, s = 1/temperature:

        w_ij = <u_i, u_j>/2 + 0.5                                  (in [0, 1], w_ii = 1)
        L(U->V) = -1/N sum_i 1/(sum_j w_ij) sum_j w_ij log softmax_j(s p_i.q_j)

    Variant: the harness trains both towers and has no frozen model, so u is the *detached*
    embedding of the modality named by ``weights_from`` (default "image": image->text rows get
    targets from image-image similarity, the paper's image-text setting with a locked image tower).
    As the reference describes, the other direction (V->U) is plain CLIP cross-entropy;
    ``both_directions=True`` also weights it with the same U-space w (w is symmetric). The two
    directions are averaged. Temperature learnable from 0.07 and clamped to scale <= 100, as CLIP.

    Distributed: global negatives; logits and weights span the gathered batch.
    """

    family = "soft-target"
    citation = "Srinivasa et al. 2023, CWCL: Cross-Modal Transfer with Continuously Weighted Contrastive Loss"
    requires = frozenset({"image", "text"})
    distributed = "global"
    hparams = {
        "temperature": HParam(
            0.07,
            low=0.0,
            low_open=True,
            search=(0.01, 0.5, True),
            doc="initial temperature; logit scale = 1/temperature",
        ),
        "learnable_temperature": HParam(True),
        "weights_from": HParam(
            "image", choices=("image", "text"), doc="modality U whose detached intra-modal similarity gives w"
        ),
        "both_directions": HParam(False, doc="also use w (not one-hot) in the V->U direction"),
    }
    _locked = (
        "CWCL: a pretrained, frozen modality U (e.g. the image tower) transfers to a trained "
        "modality V (text); 0-shot image classification and speech tasks"
    )
    defaults_source = {
        **sources(
            "temperature learnable_temperature",
            DefaultSource(
                "harness (CLIP's 0.07, learnable)",
                "CLIP: image-text from scratch",
                "n/a",
                "the paper's temperature was not recorded",
            ),
        ),
        "weights_from": DefaultSource(
            "paper (image-text setting with a locked image tower)",
            _locked,
            "partly",
            "checked against a faithful secondary description; here u is the detached image "
            "embedding of the trained tower (no frozen model)",
        ),
        "both_directions": DefaultSource(
            "paper (the other direction is plain CLIP cross-entropy)",
            _locked,
            "partly",
            "checked against a faithful secondary description",
        ),
    }

    def __init__(self, **params):
        super().__init__(**params)
        self.scale = self.logit_scale()

    def weights(self, u: torch.Tensor) -> torch.Tensor:
        """Row-normalised w_ij = <u_i,u_j>/2 + 0.5 of detached U embeddings."""
        w = u @ u.T / 2 + 0.5
        return w / w.sum(1, keepdim=True)

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        s = self.scale()
        logits = s * batch.image @ batch.text.T  # rows: images, columns: texts
        from_image = self.params["weights_from"] == "image"
        w = self.weights((batch.image if from_image else batch.text).detach())
        eye = torch.eye(len(w), dtype=w.dtype, device=w.device)
        other = w if self.params["both_directions"] else eye
        t_i2t, t_t2i = (w, other) if from_image else (other, w)
        loss = (_soft_ce(logits, t_i2t) + _soft_ce(logits.T, t_t2i)) / 2
        return LossOutput(loss, {"temperature": 1.0 / s.detach()})


class ISogCLR(Objective):
    """iSogCLR (Qiu et al., ICML 2023, "Not All Semantics are Created Equal: Contrastive
    Self-supervised Learning with Automatic Temperature Individualization"), bimodal form.

    One temperature per training image (tau_i) and per caption (tau'_i); with
    h_i(t) = x_i.t - x_i.y_i (image anchor) and h'_i(x) = x.y_i - x_i.y_i (text anchor):

        F = 1/n sum_i [ tau_i log E_{t in T_i^-} exp(h_i(t)/tau_i)
                        + tau'_i log E_{x in I_i^-} exp(h'_i(x)/tau'_i) + (tau_i + tau'_i) rho ]

    (the paper sums the two directions; E is the mean over the B-1 in-batch negatives). The inner
    expectation is tracked per sample by a moving average s_i <- (1-gamma) s_i + gamma g_i (the
    paper's convention: gamma weights the *new* batch estimate, gamma = 1 means no averaging; the
    first visit uses g_i), kept in log space. Loss value and gradient, per anchor:

        value = tau_i (log s_i + rho)      (the estimate of the sample's term of F)
        grad  = sum_j w_ij grad h_ij,   w_ij = exp(h_ij/tau_i) / ((B-1) s_i)   (weights detached)

    i.e. the surrogate tau_i(log s_i + rho) + sum_j w_ij (h_ij - stopgrad(h_ij)), whose gradient is
    the paper's estimator G(w). Temperatures are updated as in the paper (Alg. 1 / official code),
    not by the trainer's AdamW: per-sample Adam state would keep moving rows absent from the batch,
    and the paper's estimator is no gradient of the reported value. The forward pass (training mode)
    records G(tau_i) = log s_i + rho - sum_j w_ij h_ij/tau_i (clipped to +-5 as the official code);
    ``after_step`` applies u_i <- (1-beta) u_i + beta G, tau_i <- clamp(tau_i - eta u_i, tau_min,
    tau_max). Defaults (version 2) are the official code's ``iSogCLR_New_Loss``: tau_init 0.01,
    gamma 0.8, rho 8.0, eta 1e-5, beta 0.5, tau in [0.005, 0.05] (version 1 had gamma 0.9, rho 6.0,
    eta 0.01, beta 0.9; the official README's CC3M command passes rho 6.0, eta 0.03). With eta 1e-5
    and the update clipped to 5, a temperature moves at most 5e-5 a step: short runs keep them
    near tau_init.
    All state (tau, s, u, visited) is in buffers created by ``setup``, so it is checkpointed.
    Note: with s = g, G(tau_i) = rho - KL(w_i || uniform) >= rho - log(B-1), so with
    rho > log(B-1) (e.g. the default 8 at B = 32) every tau_i is driven to tau_min; tune rho down
    for small batches. Needs B >= 2 (the estimate is a mean over the B-1 negatives).

    Distributed: global negatives; per-sample state is indexed by the global ``batch.index`` of the
    gathered batch, so every rank applies the same update and the replicated state stays in sync.
    """

    family = "temperature"
    citation = (
        "Qiu et al. 2023, Not All Semantics are Created Equal: Contrastive Self-supervised "
        "Learning with Automatic Temperature Individualization"
    )
    requires = frozenset({"image", "text", "index"})
    distributed = "global"
    min_batch_size = 2
    grad_clip = 5.0
    hparams = {
        "tau_init": HParam(0.01, low=0.0, low_open=True, search=(0.005, 0.05, True)),
        "gamma": HParam(
            0.8,
            low=0.0,
            high=1.0,
            low_open=True,
            search=(0.5, 1.0, False),
            doc="moving-average weight of the new estimate (1 = no averaging)",
        ),
        "rho": HParam(8.0, low=0.0, search=(1.0, 10.0, False), doc="DRO radius"),
        "eta": HParam(1e-5, low=0.0, search=(1e-5, 0.1, True), doc="temperature step size"),
        "beta": HParam(0.5, low=0.0, high=1.0, low_open=True, doc="temperature momentum weight"),
        "tau_min": HParam(0.005, low=0.0, low_open=True),
        "tau_max": HParam(0.05, low=0.0, low_open=True),
    }
    #: 2: defaults set to the official iSogCLR_New_Loss (gamma 0.8, rho 8, eta 1e-5, beta 0.5; were
    #: 0.9, 6, 0.01, 0.9, the LibAUC docstring's bimodal values)
    version = "2"
    defaults_source = sources(
        "tau_init gamma rho eta beta tau_min tau_max",
        DefaultSource(
            "official code bimodal_exps/models/losses.py, iSogCLR_New_Loss (per-sample "
            "temperatures, use_temp_net=False: tau_init 0.01, gamma 0.8, rho 8.0, eta_init 1e-5, "
            "beta_u 0.5, tau in [0.005, 0.05])",
            "CC3M image-text pre-training from pretrained encoders (--init_model: timm image and "
            "Hugging Face text encoders), "
            "batch 128 per GPU, one view per modality",
            "partly",
            "read in public copies of the official losses.py that hold iSogCLR_New_Loss (the class "
            "the official README's --ita_type new_isogclr selects); the stored snapshot of "
            "zhqiu/contrastive-learning-iSogCLR (c20903b) lacks it: its SogCLR_DRO_Loss with "
            "clip.py's defaults uses gamma 0.8, rho 8.0, eta 0.001, beta_u 0.9, tau in "
            "[0.005, 1.0], and the README/run script pass rho 6.0, eta 0.03 (const)",
        ),
    )

    def __init__(self, **params):
        super().__init__(**params)
        p = self.params
        if not p["tau_min"] <= p["tau_init"] <= p["tau_max"]:
            raise HyperparameterError(
                f"{self.name}: tau_init={p['tau_init']} must lie in "
                f"[tau_min, tau_max] = [{p['tau_min']}, {p['tau_max']}]"
            )
        self._pending: list = []

    def setup(self, *, num_samples: int, batch_size: int, steps: int, **kw) -> None:
        super().setup(num_samples=num_samples, batch_size=batch_size, steps=steps, **kw)
        self.register_buffer("tau", torch.full((2, num_samples), self.params["tau_init"]))
        self.register_buffer("log_s", torch.zeros(2, num_samples))
        self.register_buffer("u", torch.zeros(2, num_samples))
        self.register_buffer("visited", torch.zeros(2, num_samples, dtype=torch.bool))

    def _direction(self, sim: torch.Tensor, k: int, idx: torch.Tensor) -> torch.Tensor:
        n, p = sim.shape[0], self.params
        tau = self.tau[k, idx].to(sim.dtype)
        h = sim - sim.diagonal()[:, None]  # rows: anchors, h_ij = s_ij - s_ii
        off = ~torch.eye(n, dtype=torch.bool, device=sim.device)
        z = (h.detach() / tau[:, None]).masked_fill(~off, -math.inf)
        log_s = torch.logsumexp(z, 1) - math.log(n - 1)  # log g_i: this batch's estimate
        if self.training:
            with torch.no_grad():
                if p["gamma"] < 1:  # log((1-gamma) s_old + gamma g) where visited before
                    old = self.log_s[k, idx].to(log_s.dtype) + math.log1p(-p["gamma"])
                    mixed = torch.logaddexp(old, log_s + math.log(p["gamma"]))
                    log_s = torch.where(self.visited[k, idx], mixed, log_s)
                self.log_s[k, idx] = log_s.to(self.log_s.dtype)
                self.visited[k, idx] = True
        w = (z - log_s[:, None]).exp() / (n - 1)  # detached weights, 0 on the diagonal
        if self.training:
            g_tau = log_s + p["rho"] - (w * z.masked_fill(~off, 0.0)).sum(1)
            self._pending.append((k, idx, g_tau.clamp(-self.grad_clip, self.grad_clip)))
        return (tau * (log_s + p["rho"]) + (w * (h - h.detach())).sum(1)).mean()

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        if not hasattr(self, "tau"):
            raise RuntimeError("isogclr: call setup(num_samples=...) before the first loss")
        n = batch.image.shape[0]
        if n < self.min_batch_size:
            raise ValueError(
                f"isogclr needs a batch of at least 2 pairs, got {n}: its estimate s_i is a "
                "mean over the B-1 in-batch negatives; set budget.batch_size >= 2"
            )
        sim = batch.image @ batch.text.T
        sim = sim.to(torch.promote_types(sim.dtype, torch.float32))  # h/tau with tau ~ 0.005
        idx, self._pending = batch.index.to(self.tau.device), []
        loss = self._direction(sim, 0, idx) + self._direction(sim.T, 1, idx)
        return LossOutput(loss, {"tau_image": self.tau[0, idx].mean(), "tau_text": self.tau[1, idx].mean()})

    @torch.no_grad()
    def after_step(self) -> None:
        p = self.params
        for k, idx, g in self._pending:
            self.u[k, idx] = (1 - p["beta"]) * self.u[k, idx] + p["beta"] * g.to(self.u.dtype)
            tau = self.tau[k, idx] - p["eta"] * self.u[k, idx]
            self.tau[k, idx] = tau.clamp(p["tau_min"], p["tau_max"])
        self._pending = []


def reweighted_nll(u: torch.Tensor) -> torch.Tensor:
    """softplus(u) (1 + e^{-u}) in float64, the value of MACL's sg(V) (-log P) at u = log((1-P)/P):
    -> 1 as u -> -inf (log1p(e^u) e^{-u} = 1 - e^u/2 + ... there), ~u for large u."""
    u = u.double()
    softplus = torch.logaddexp(u, torch.zeros_like(u))  # F.softplus returns u itself above u = 20
    return softplus + torch.where(u < -20, 1 - u.exp() / 2, softplus * (-u).exp())


class MACL(Objective):
    """Model-Aware Contrastive Learning (Huang et al., ICML 2023, "Model-Aware Contrastive
    Learning: Towards Escaping the Dilemmas").

    The temperature follows the alignment magnitude A, the batch's mean positive similarity
    (detached), and each anchor's InfoNCE term is reweighted by the detached V_i = 1/(1 - P_ii)
    (the paper's gradient reweighting against gradient reduction; = 1/sum_{k!=i} P_ik):

        A = 1/B sum_i x_i.y_i,      tau = tau_0 * (1 + alpha (A - A_0))
        P_ij = softmax_j(x_i.y_j / tau),   L(i->t) = -1/B sum_i sg(V_i) log P_ii

    symmetric (text->image uses the transposed logits; A is shared), averaged. Defaults and ranges
    are those of lightly's MACLLoss (written after the paper): tau_0 0.1, alpha 0.5, A_0 0, alpha
    and A_0 in [0, 1]; the official repo's ``MACLb`` is the same rule with A_0 = 0 and alpha
    ("beta") 1.0, its ``MACLa`` the variant tau_0 * 2^A (not implemented). The factor
    1 + alpha (A - A_0) is floored at 0.1 so tau stays positive when A falls far below A_0 (never
    at the defaults). ``reweight=False`` drops V; with alpha = 0 it is then InfoNCE with tau_0.
    Variant: image-text only, negatives are the other modality's batch (no SimCLR 2B views).

    Numerics: with u_i = log((1 - P_ii)/P_ii), computed as a logsumexp over the negatives, each
    term sg(V_i)(-log P_ii) is softplus(u_i)(1 + e^{-u_i}) in value (:func:`reweighted_nll`) and
    du_i in gradient, so it stays exact when P_ii rounds to 1 (e.g. temperature 0.01, aligned
    pairs); the plain form gave V_i * 0 there. Needs B >= 2 (with no negative V_i = 1/0).

    Distributed: global negatives; A is the mean over the gathered batch's positives.
    """

    #: 2: computed in log-ratio form (the plain form lost the positive's pull when P_ii rounds to 1)
    version = "2"
    family = "temperature"
    citation = "Huang et al. 2023, Model-Aware Contrastive Learning: Towards Escaping the Dilemmas"
    requires = frozenset({"image", "text"})
    distributed = "global"
    min_batch_size = 2
    hparams = {
        "temperature": HParam(
            0.1, low=0.0, low_open=True, search=(0.02, 0.5, True), doc="base temperature tau_0"
        ),
        "alpha": HParam(0.5, low=0.0, high=1.0, search=(0.0, 1.0, False)),
        "A_0": HParam(0.0, low=0.0, high=1.0, search=(0.0, 0.8, False), doc="alignment threshold"),
        "reweight": HParam(True, doc="gradient reweighting V_i = 1/(1-P_ii)"),
    }
    defaults_source = {
        **sources(
            "temperature alpha A_0",
            DefaultSource(
                "library: lightly MACLLoss (written after the paper)",
                "lightly's self-supervised image setting (2 augmented views)",
                "no",
                "the official repo's MACLb uses A_0 = 0 and alpha 1.0",
            ),
        ),
        "reweight": DefaultSource(
            "paper (gradient reweighting against gradient reduction)",
            "self-supervised image pre-training from scratch (SimCLR-style views)",
            "no",
        ),
    }

    def _direction(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.params["reweight"]:
            return -F.log_softmax(logits, dim=1).diagonal().mean()
        # u_i = log r_i, r_i = sum_{k!=i} e^{l_ik - l_ii} = (1 - P_ii) / P_ii: -log P_ii = softplus(u_i)
        # and V_i = 1 + e^{-u_i}. sg(V_i) (-log P_ii) has value softplus(u)(1 + e^{-u}) (>= 1) and
        # gradient exactly du_i (V_i sigmoid(u_i) = 1). log_softmax would round -log P_ii to 0 once
        # 1 - P_ii < 1e-7 (float32; 1e-16 in float64) and V_i would multiply that 0.
        eye = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        u = torch.logsumexp(logits.masked_fill(eye, -math.inf), 1) - logits.diagonal()
        return (reweighted_nll(u.detach()).to(u.dtype) + u - u.detach()).mean()

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        p = self.params
        n = batch.image.shape[0]
        if n < self.min_batch_size:
            raise ValueError(
                f"macl needs a batch of at least 2 pairs, got {n}: with no negative P_ii = 1 "
                "and the reweighting V_i = 1/(1 - P_ii) is 1/0; set budget.batch_size >= 2"
            )
        sim = batch.image @ batch.text.T
        sim = sim.to(torch.promote_types(sim.dtype, torch.float32))  # logits up to 1/tau_0
        a = sim.diagonal().mean().detach()
        tau = p["temperature"] * (1 + p["alpha"] * (a - p["A_0"])).clamp_min(0.1)
        logits = sim / tau
        loss = (self._direction(logits) + self._direction(logits.T)) / 2
        return LossOutput(loss, {"temperature": tau.detach(), "alignment": a})


class _Heads(LazyModuleMixin, nn.Module):
    """H linear maps d -> d (weight (H, d, d)), created at the first call (the objective does not
    know d before), each output L2-normalised: (B, d) -> (H, B, d)."""

    def __init__(self, heads: int, init: str):
        super().__init__()
        self.heads, self.init = heads, init
        self.weight = UninitializedParameter()

    def initialize_parameters(self, x: torch.Tensor) -> None:
        if self.has_uninitialized_params():
            d = x.shape[-1]
            with torch.no_grad():
                self.weight.materialize((self.heads, d, d))
                if self.init == "identity":
                    self.weight.copy_(torch.eye(d).expand(self.heads, d, d))
                else:  # nn.Linear's default: U(-1/sqrt(d), 1/sqrt(d))
                    self.weight.uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(torch.einsum("hed,bd->hbe", self.weight.to(x.dtype), x), dim=-1)


class AMCL(Objective):
    """Adaptive Multi-head Contrastive Learning (Wang, Koniusz, Gedeon, Zheng, ECCV 2024,
    arXiv 2310.05615, "Adaptive Multi-head Contrastive Learning").

    H projection heads, each with its own temperature tau_h and the paper's temperature
    regulariser Omega(tau) = d'/2 log tau + 1/tau (d' = head dimension), summed over heads:

        z_h = normalize(W_h x),  L = sum_h [ CLIP(z_h(image), z_h(text); tau_h) + beta Omega(tau_h) ]

    Variant (harness adaptation, documented): the heads are H linear maps d -> d owned by the
    objective on top of the towers' embeddings (evaluation uses the towers' embeddings, as
    projection heads are discarded after pre-training); they are created lazily at the first loss,
    since the objective does not know d before. The paper's temperatures are pair-adaptive, from a
    shared network phi (tau_ij = eta + iota sigmoid(-<phi(z_i), phi(z_j)>), tau in [1e-5, 2]) with
    Omega on positive pairs and a subtracted Omega-like term on negatives (and a top-k mean of the
    negatives in the released code). Here each head has one learnable temperature (init 0.1, the
    official AdaptiveTemperature default) clamped like CLIP's (scale <= 100), with beta Omega on it:
    the per-pair network and the negative-pair term (unbounded below but for the sigmoid floor) are
    left out. Softmax InfoNCE per head is symmetric (averaged); heads are summed as in the paper.
    Defaults: 3 heads, beta 0.01 (official SimCLR setting), randomly initialised heads
    (``head_init="identity"`` gives identity maps; identical heads stay identical).

    Distributed: global negatives per head over the gathered batch; heads/temperatures replicated.
    """

    family = "temperature"
    citation = "Wang et al. 2024, Adaptive Multi-head Contrastive Learning"
    requires = frozenset({"image", "text"})
    distributed = "global"
    hparams = {
        "num_heads": HParam(3, low=1, high=64),
        "temperature": HParam(
            0.1, low=0.0, low_open=True, search=(0.02, 0.5, True), doc="initial temperature of every head"
        ),
        "learnable_temperature": HParam(True),
        "beta": HParam(0.01, low=0.0, search=(1e-4, 0.1, True), doc="weight of Omega(tau_h)"),
        "head_init": HParam("random", choices=("random", "identity")),
    }
    _ssl = "SimCLR-style self-supervised image pre-training from scratch, 2 augmented views"
    defaults_source = {
        "num_heads": DefaultSource("paper (3 heads)", _ssl, "no"),
        "temperature": DefaultSource(
            "official code (AdaptiveTemperature default 0.1)",
            _ssl,
            "no",
            "the paper's temperatures are pair-adaptive; here one per head",
        ),
        "learnable_temperature": DefaultSource(
            "harness (one learnable temperature per head)",
            _ssl,
            "n/a",
            "replaces the paper's per-pair temperature network",
        ),
        "beta": DefaultSource("official code (SimCLR setting)", _ssl, "no"),
        "head_init": DefaultSource("harness (nn.Linear's default init)", _ssl, "n/a"),
    }

    def __init__(self, **params):
        super().__init__(**params)
        p = self.params
        with warnings.catch_warnings():  # "lazy modules are a new feature" notice
            warnings.simplefilter("ignore", UserWarning)
            self.heads = _Heads(p["num_heads"], p["head_init"])
        self.scales = nn.ModuleList(self.logit_scale() for _ in range(p["num_heads"]))

    def loss(self, batch: EmbeddingBatch) -> LossOutput:
        zi, zt = self.heads(batch.image), self.heads(batch.text)
        d, total, logs = zi.shape[-1], 0.0, {}
        for h, sc in enumerate(self.scales):
            s = sc()
            logits = s * zi[h] @ zt[h].T
            clip = symmetric_ce(logits)
            omega = -(d / 2) * torch.log(s) + s  # Omega(tau) with tau = 1/s
            total = total + clip + self.params["beta"] * omega
            logs[f"temperature_{h}"] = 1.0 / s.detach()
        return LossOutput(total, logs)
