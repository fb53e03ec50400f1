"""Linear probes on real image datasets: CIFAR-10 and CIFAR-100 (CLIP_benchmark's definitions,
LAION-AI/CLIP_benchmark; Radford et al. 2021, CLIP). The data declarations, labels, validation
hold-out and cached embeddings are :mod:`tasks.classification_real`'s, shared with zero-shot.

Linear probe (docs/linear-probe.md), two protocols. ``cifar10-linear``, ``cifar100-linear``
(``harness``): multinomial logistic regression on frozen, L2-normalised image features solved to
convergence (:func:`tasks.probe.fit_logistic_regression`, full-batch L-BFGS as OpenAI's CLIP
probe), the weight decay chosen on a held-out validation part of the train split.
``cifar10-linear-cb``, ``cifar100-linear-cb`` (``clip_benchmark``): CLIP_benchmark's
``metrics/linear_probe.py`` (AdamW, its weight-decay search, refit on train + validation, ``lp_*``
keys; :func:`tasks.probe.clip_benchmark_probe`), on any device.

Validation (tuning, checkpoint selection): CIFAR has no validation split, so a seeded held-out part
of ``train`` stands in for it and the test split is never read.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from .base import EvalContext
from .classification_real import Cifar10Data, Cifar100Data, RealClassification
from .probe import (
    CB_EPOCHS,
    CB_SEED,
    CB_VAL_PROPORTION,
    PROBE_MAX_ITER,
    PROBE_TOL,
    WEIGHT_DECAYS,
    LogisticRegression,
    cb_facts,
    cb_logits,
    cb_metrics,
    cb_protocol,
    cb_split,
    clip_benchmark_probe,
    fit_facts,
    harness_protocol,
    probe_metrics,
    select_probe,
)
from .zeroshot import CLASSIFICATION_METRICS


class RealLinearProbe(RealClassification):
    """Linear probe on frozen, L2-normalised image features, protocol ``harness`` (the objective of
    OpenAI's CLIP logistic-regression probe, solved to convergence; docs/linear-probe.md).

    The train split is split once (:meth:`RealClassification.holdout`): a validation part (10%, at
    most 5,000 images) and the rest, of which the first ``n_fit`` (default 10,000) of the seeded
    permutation are the fit set (the cap keeps a CPU run to minutes; set ``n_fit = None`` for all
    45,000). For every weight decay in :data:`tasks.probe.WEIGHT_DECAYS` a probe is fitted on the fit
    set (:func:`fit_logistic_regression`, float64 L-BFGS to a gradient tolerance, at most ``max_iter``
    iterations) and scored on the validation part; the best top-1 accuracy wins, ties going to the
    larger weight decay (as ``shapes-linear``). The chosen probe is then reported on the test split
    (``acc1``, ``acc5`` with more than 5 classes, ``mean_per_class_recall``), or, under validation,
    on the validation part itself, never reading the test split. Fitting runs on the encoder's device.

    Extra metrics: ``weight_decay`` / ``log10_weight_decay`` (the chosen one), ``val_acc1``,
    ``n_fit``, ``n_val`` (images used after dropping undecodable ones), ``n_undecodable`` (all
    parts read), ``probe_converged`` (1 or 0: the reported fit met the tolerance; 0 is also logged as
    a warning), ``probe_iterations`` and ``probe_unconverged_fits`` (fits of the grid that did not
    converge). ``protocol`` records the solver, its tolerance and cap, the grid and the chosen fit.
    """

    family = "linear_probe"
    version = "2"  # 2: L-BFGS preconditioned and run to its tolerance (1 stopped at 200 iterations)
    main_score = "acc1"
    metrics = CLASSIFICATION_METRICS + (
        "weight_decay",
        "log10_weight_decay",
        "val_acc1",
        "n_fit",
        "n_val",
        "n_undecodable",
        "probe_converged",
        "probe_iterations",
        "probe_unconverged_fits",
    )
    modality = "image"
    n_fit: ClassVar[int | None] = 10_000
    max_iter: ClassVar[int] = PROBE_MAX_ITER
    tol: ClassVar[float] = PROBE_TOL
    weight_decays: ClassVar[tuple[float, ...]] = WEIGHT_DECAYS
    check_splits = ("train", "test")

    def _features(self, ctx: EvalContext, emb: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
        device = getattr(ctx.encoder, "device", torch.device("cpu"))
        return F.normalize(emb[ok].float(), dim=-1).to(device)

    def select(
        self, x_fit: torch.Tensor, y_fit: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor
    ) -> tuple[LogisticRegression, float, list[float]]:
        """The probe with the best validation top-1 accuracy over :attr:`weight_decays` (ties: the
        larger weight decay), that accuracy and the weight decays whose fit did not converge."""
        return select_probe(
            x_fit, y_fit, x_val, y_val, self.weight_decays, len(self.class_names()), self.max_iter, self.tol
        )

    def score(self, ctx: EvalContext, split: str):
        self.bind(ctx.data)
        train = self.table(ctx, self.train_split)
        image_col, label_col = self.detect_columns(train)
        y_train = self.labels(train, label_col)
        val_rows, rest = self.holdout(len(train))
        fit_rows = np.sort(rest if self.n_fit is None else rest[: self.n_fit])
        e_fit, ok_fit = self.embed(ctx, train, self.train_split, image_col, fit_rows)
        e_val, ok_val = self.embed(ctx, train, self.train_split, image_col, val_rows)
        self._nonempty(ok_fit, f"{self.name}'s fit set")
        self._nonempty(ok_val, f"{self.name}'s validation part")
        x_fit, x_val = self._features(ctx, e_fit, ok_fit), self._features(ctx, e_val, ok_val)
        y_fit = torch.from_numpy(y_train[fit_rows][ok_fit.numpy()])
        y_val = torch.from_numpy(y_train[val_rows][ok_val.numpy()])
        probe, val_acc, unconverged = self.select(x_fit, y_fit, x_val, y_val)
        n_bad = int((~ok_fit).sum() + (~ok_val).sum())

        if ctx.validation:  # report on the validation part: the test split is never read
            table, x_eval, y_eval, items = train, x_val, y_val, val_rows[ok_val.numpy()]
        else:
            table = self.table(ctx, self.source.split)
            image_col, label_col = self.detect_columns(table)
            y_test = self.labels(table, label_col)
            e_test, ok_test = self.embed(ctx, table, self.source.split, image_col)
            self._nonempty(ok_test, f"{self.name} ({self.source.split})")
            n_bad += int((~ok_test).sum())
            x_eval, y_eval = self._features(ctx, e_test, ok_test), torch.from_numpy(y_test[ok_test.numpy()])
            items = np.flatnonzero(ok_test.numpy())

        logits = probe.logits(x_eval)
        metrics: dict[str, Any] = probe_metrics(logits, y_eval)
        metrics.update(
            weight_decay=probe.weight_decay,
            log10_weight_decay=float(np.log10(probe.weight_decay)),
            val_acc1=val_acc,
            n_fit=float(len(y_fit)),
            n_val=float(len(y_val)),
            n_undecodable=float(n_bad),
            probe_converged=float(probe.converged),
            probe_iterations=float(probe.n_iter),
            probe_unconverged_fits=float(len(unconverged)),
        )
        names = self.class_names()
        pred = logits.argmax(dim=1).cpu().numpy()
        target = y_eval.numpy()
        predictions = [
            {"item": int(i), "true": names[int(t)], "pred": names[int(p)]}
            for i, t, p in zip(items, target, pred)
        ]
        prov = self.provenance(table)
        if ctx.validation:
            prov["dataset"] += f" ({self.train_split} split, held-out validation part)"
        protocol = harness_protocol(
            self.weight_decays,
            self.max_iter,
            self.tol,
            **fit_facts(probe, unconverged),
            fit=f"at most {self.n_fit} other train rows",
            validation=f"a seeded {self.val_fraction:.0%} of the train split (at most {self.max_val})",
        )
        return metrics, dict(
            predictions=predictions,
            item_scores=(pred == target).astype(float).tolist(),
            n_items=len(items),
            protocol=protocol,
            **prov,
        )


class Cifar10Linear(Cifar10Data, RealLinearProbe):
    """CIFAR-10 linear probe: fit on (at most ``n_fit`` of) the train split minus a seeded
    validation part, weight decay chosen on that part, reported on the 10,000 test images."""


class Cifar100Linear(Cifar100Data, RealLinearProbe):
    """CIFAR-100 linear probe over the 100 fine classes; protocol as ``cifar10-linear``."""


class RealLinearProbeCB(RealClassification):
    """Linear probe under CLIP_benchmark's protocol (``metrics/linear_probe.py``, docs/linear-probe.md).

    The train split is divided as CLIP_benchmark's ``--val_proportion 0.1`` does
    (``torch.utils.data.random_split(train, [0.9, 0.1])`` from a generator seeded with 0,
    :func:`tasks.probe.cb_split`); all of the train part is used (no ``n_fit`` cap: a CPU run takes
    minutes). :func:`tasks.probe.clip_benchmark_probe` searches the weight decay over
    ``np.logspace(-6, 2, 97)`` on the validation part (AdamW, lr 0.1, 10 epochs, batch 64, cosine
    schedule, seed 0; AMP on CUDA as CLIP_benchmark, float32 on the CPU), retrains the chosen one on
    train + validation and reports it on the test split. Under validation mode the refit is skipped
    and the searched probe is reported on the validation part, never reading the test split.

    Metrics, CLIP_benchmark's keys: ``lp_acc1`` (main score), ``lp_acc5`` (when the test labels
    reach 5), ``lp_mean_per_class_recall``, ``weight_decay``, ``epochs``, ``seed``, ``fewshot_k``
    (-1), ``normalized`` (1); and ``val_acc1``, ``n_fit``, ``n_val``, ``n_undecodable``. ``protocol``
    records the hyperparameters, the search and the chosen weight decay.
    """

    family = "linear_probe"
    version = "1"
    main_score = "lp_acc1"
    metrics = (
        "lp_acc1",
        "lp_acc5",
        "lp_mean_per_class_recall",
        "weight_decay",
        "epochs",
        "seed",
        "fewshot_k",
        "normalized",
        "val_acc1",
        "n_fit",
        "n_val",
        "n_undecodable",
    )
    modality = "image"
    val_proportion: ClassVar[float] = CB_VAL_PROPORTION
    check_splits = ("train", "test")

    def score(self, ctx: EvalContext, split: str):
        self.bind(ctx.data)
        train = self.table(ctx, self.train_split)
        image_col, label_col = self.detect_columns(train)
        y_train = self.labels(train, label_col)
        g = torch.Generator().manual_seed(CB_SEED)
        fit_rows, val_rows = cb_split(len(train), self.val_proportion, g)
        emb, ok = self.embed(ctx, train, self.train_split, image_col)
        keep = ok.numpy()
        fit_rows, val_rows = fit_rows[keep[fit_rows]], val_rows[keep[val_rows]]
        self._nonempty(torch.from_numpy(keep[fit_rows]), f"{self.name}'s train part")
        self._nonempty(torch.from_numpy(keep[val_rows]), f"{self.name}'s validation part")
        x = F.normalize(emb.float(), dim=-1)
        device = getattr(ctx.encoder, "device", torch.device("cpu"))
        amp = torch.device(device).type == "cuda"
        probe = clip_benchmark_probe(
            x[fit_rows],
            torch.from_numpy(y_train[fit_rows]),
            x[val_rows],
            torch.from_numpy(y_train[val_rows]),
            device=device,
            amp=amp,
            refit=not ctx.validation,
            generator=g,
        )
        n_bad = int((~ok).sum())

        if ctx.validation:  # the searched probe on the validation part: the test split is never read
            table, logits, target, items = train, probe.val_logits, y_train[val_rows], val_rows
        else:
            table = self.table(ctx, self.source.split)
            image_col, label_col = self.detect_columns(table)
            y_test = self.labels(table, label_col)
            e_test, ok_test = self.embed(ctx, table, self.source.split, image_col)
            self._nonempty(ok_test, f"{self.name} ({self.source.split})")
            n_bad += int((~ok_test).sum())
            logits = cb_logits(probe.model, F.normalize(e_test[ok_test].float(), dim=-1), amp)
            target, items = y_test[ok_test.numpy()], np.flatnonzero(ok_test.numpy())

        metrics: dict[str, Any] = cb_metrics(logits, torch.from_numpy(target))
        metrics.update(
            weight_decay=probe.weight_decay,
            epochs=CB_EPOCHS,
            seed=CB_SEED,
            fewshot_k=-1,
            normalized=1.0,
            val_acc1=probe.val_acc1,
            n_fit=float(len(fit_rows)),
            n_val=float(len(val_rows)),
            n_undecodable=float(n_bad),
        )
        names = self.class_names()
        pred = logits.argmax(dim=1).numpy()
        predictions = [
            {"item": int(i), "true": names[int(t)], "pred": names[int(p)]}
            for i, t, p in zip(items, target, pred)
        ]
        prov = self.provenance(table)
        if ctx.validation:
            prov["dataset"] += f" ({self.train_split} split, CLIP_benchmark validation part)"
        protocol = cb_protocol(
            amp,
            f"random_split of the train split, proportion {self.val_proportion} "
            f"(generator seeded with {CB_SEED})",
            **cb_facts(probe),
        )
        return metrics, dict(
            predictions=predictions,
            item_scores=(pred == target).astype(float).tolist(),
            n_items=len(items),
            protocol=protocol,
            **prov,
        )


class Cifar10LinearCB(Cifar10Data, RealLinearProbeCB):
    """CIFAR-10 linear probe under CLIP_benchmark's protocol (``lp_*`` keys): train 90% / validation
    10% of the train split, weight decay searched, refit on both, reported on the 10,000 test images."""


class Cifar100LinearCB(Cifar100Data, RealLinearProbeCB):
    """CIFAR-100 linear probe over the 100 fine classes under CLIP_benchmark's protocol; as
    ``cifar10-linear-cb``."""
