"""``budget.shard = "fsdp"``: the towers sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``)
in 2 CPU processes (gloo) train like one process on the concatenated batch.

- The trainer's step (``forward_backward``) on two towers whose transformer blocks and root are
  FSDP units, for every objective that supports torch.distributed, plain and with GradCache: the
  loss, the towers' gradients (gathered in full), the objective's gradients and the parameters
  after one AdamW step equal one process. Objectives that use one modality leave the other tower
  unused (its blocks never run), as in a real text-only or image-only run.
- ``train`` itself (harness-micro on the shapes world, gradient clipping on, a validation in the
  middle): the model the caller holds comes back plain and complete on every rank, equal to a
  single-process run; the validation saw the full weights.
- ``budget.shard`` is not part of the run identity or the budget id.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from test_distributed import spawn_workers

from harness.config import Budget, ConfigError, resolve_config
from harness.core.batch import EmbeddingBatch
from harness.data.batches import ShapesTrainData
from harness.data.shapes import ShapesSpec, ShapesWorld, vocabulary
from harness.engine import distributed as hd
from harness.engine.fsdp import clip_grad_norm_, is_sharded, shard, transformer_blocks
from harness.engine.models import Encoder, ModelConfig, build_model
from harness.engine.trainer import forward_backward, train
from objectives import OBJECTIVES

W, B, D_IN, H, D, K, C = 2, 6, 5, 7, 8, 3, 19  # H = 7: shards of unequal size over 2 ranks
NAMES = sorted(n for n in OBJECTIVES.names() if OBJECTIVES.get(n).distributed != "unsupported")
CHUNKS = (None, 4)  # plain step; GradCache in sub-batches of 4 rows (local batch 6: 4 + 2)
RAW = ("image", "text", "image_view", "text_view", "hard_negative_text")


def problem():
    g = torch.Generator().manual_seed(7)
    raw = {k: torch.randn(W * B, D_IN, generator=g, dtype=torch.float64) for k in RAW[:4]}
    raw["hard_negative_text"] = torch.randn(W * B, K, D_IN, generator=g, dtype=torch.float64)
    labels = torch.arange(W * B) % 4
    index = torch.arange(W * B) + 10
    concepts = (torch.rand(W * B, C, generator=g) < 0.3).double()
    return raw, labels, index, concepts


@dataclass
class RawBatch:
    """The fields an objective asked for (others None), split by GradCache like the trainer's."""

    image: torch.Tensor | None = None
    text: torch.Tensor | None = None
    image_view: torch.Tensor | None = None
    text_view: torch.Tensor | None = None
    hard_negative_text: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    index: torch.Tensor | None = None
    concepts: torch.Tensor | None = None


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(H, H)

    def forward(self, x):
        return x + torch.tanh(self.fc(x))


class Tower(torch.nn.Module):
    """An input layer and a projection (in the root FSDP unit) around two blocks (one unit each)."""

    def __init__(self):
        super().__init__()
        self.inp = torch.nn.Linear(D_IN, H)
        self.blocks = torch.nn.ModuleList([Block(), Block()])
        self.proj = torch.nn.Parameter(torch.randn(H, D) / H**0.5)

    def forward(self, x):
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return h @ self.proj


class TwoTowers(torch.nn.Module):
    """The trainer's ``Towers`` for raw features: image fields through one tower, text fields
    through the other, only the fields present (an unused tower gets no gradient)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.image, self.text = Tower(), Tower()
        # scalars stay out of FSDP's shards: one the towers use, one unused (open_clip's logit_scale)
        self.shift = torch.nn.Parameter(torch.tensor(0.1))
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0))
        self.double()

    def forward(self, batch: RawBatch) -> EmbeddingBatch:
        emb = EmbeddingBatch(labels=batch.labels, index=batch.index, concepts=batch.concepts)
        for k in RAW:
            x = getattr(batch, k)
            if x is not None:
                tower = self.image if k.startswith("image") else self.text
                setattr(emb, k, F.normalize(tower(x) + self.shift, dim=-1))
        return emb


def full(t):
    return None if t is None else (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().clone()


def fsdp_step(name: str, rows: slice, chunk: int | None, sharded: bool):
    """``forward_backward``, the trainer's clipping and one AdamW step on ``rows`` (sharded: the
    towers in FSDP2): (loss, towers' grads, objective's grads, parameters after the step,
    (clipping norm, clipped grads))."""
    raw, labels, index, concepts = problem()
    torch.manual_seed(1)
    obj = OBJECTIVES.get(name)()
    obj.setup(num_samples=100, batch_size=W * B, steps=10, embed_dim=D, num_concepts=C)
    obj = obj.double()
    given = {k: raw[k][rows] for k in RAW if k in obj.requires}
    batch = RawBatch(**given, labels=labels[rows], index=index[rows], concepts=concepts[rows])
    towers = TwoTowers()
    if sharded:
        assert len(transformer_blocks(towers)) == 4
        shard(towers, torch.device("cpu"))
        assert is_sharded(towers) and all(is_sharded(b) for b in transformer_blocks(towers))
        kinds = [type(p).__name__ for p in towers.parameters()]
        assert kinds.count("Parameter") == 2 and kinds.count("DTensor") == len(kinds) - 2
        assert towers.replicated_params == [towers.shift, towers.logit_scale]
    opt = torch.optim.AdamW(
        [*towers.parameters(), *(p for p in obj.parameters() if p.requires_grad)], lr=0.05
    )
    torch.manual_seed(2)
    out = forward_backward(towers, obj, batch, gradcache_chunk=chunk)
    grads = [full(p.grad) for p in towers.parameters()]
    own = {n: p.grad.clone() for n, p in obj.named_parameters() if p.grad is not None}
    # the trainer's clipping (sharded: the joint norm of DTensor and plain gradients), always active
    params = [*towers.parameters(), *obj.parameters()]
    norm = (clip_grad_norm_ if sharded else torch.nn.utils.clip_grad_norm_)(params, 0.05)
    clipped = [full(p.grad) for p in params]
    opt.step()
    after = [full(p) for p in params]
    return out.loss, grads, own, after, (norm, clipped)


# ---------------------------------------------------------------------- train() end to end
SPEC = dict(n_train=256, n_val=32, n_test=32, n_heldout=32, n_zeroshot=32)
TRAIN_CASES = {"plain": {}, "gradcache": {"gradcache_chunk": 4}}


def train_run(cache: str, shard_mode: str, **budget):
    """``train`` of harness-micro with clip for 3 steps of 16 (grad clipping on), validated after
    step 2: (the model's state afterwards, its tensor types, [(step, parameter types, weight sum)]
    seen by the validation, the objective's state)."""
    world = ShapesWorld(ShapesSpec(**SPEC), cache)
    torch.manual_seed(0)
    model, tok, size, mean, std = build_model(ModelConfig(name="harness-micro"), words=vocabulary())
    enc = Encoder(model, tok, size, mean, std)
    seen = []

    def validate(step):
        seen.append((step, sorted({type(p).__name__ for p in model.parameters()}), _weight_sum(model)))

    b = Budget(
        **{**dict(steps=3, batch_size=16, warmup_steps=1, lr=1e-3, grad_clip=0.5, shard=shard_mode), **budget}
    )
    obj = OBJECTIVES.get("clip")()
    train(
        model,
        obj,
        enc,
        ShapesTrainData(world, tok, seed=0),
        b,
        0,
        torch.device("cpu"),
        validate=validate,
        validate_every=2,
    )
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    kinds = sorted({type(v).__name__ for v in model.state_dict().values()})
    return state, kinds, seen, {k: v.detach().clone() for k, v in obj.state_dict().items()}


def _weight_sum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def worker(rank: int, world: int, port: int, out_dir: str):
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
    )
    torch.set_num_threads(1)
    hd.init_from_env(backend="gloo")
    try:
        results = {}
        rows = slice(rank * B, (rank + 1) * B)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for name in NAMES:
                for chunk in CHUNKS:
                    results[(name, chunk)] = fsdp_step(name, rows, chunk, sharded=True)
            for case, budget in TRAIN_CASES.items():
                results[case] = train_run(os.path.join(out_dir, "cache"), "fsdp", **budget)
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        hd.barrier()  # no rank tears the group down while another still uses it
        hd.cleanup()


@pytest.fixture(scope="module")
def dist_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    ShapesWorld(ShapesSpec(**SPEC), out / "cache")  # rendered once, read by both ranks
    spawn_workers(worker, out)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(W)]


def _close(got, want, **tol):
    assert (got is None) == (want is None)
    if want is not None:
        torch.testing.assert_close(got, want, **tol)


@pytest.mark.parametrize("chunk", CHUNKS, ids=["plain", "gradcache"])
@pytest.mark.parametrize("name", NAMES)
def test_fsdp_step_equals_one_process_on_the_concatenated_batch(dist_results, name, chunk):
    loss, tower, own, after, (norm, clipped) = fsdp_step(name, slice(None), None, sharded=False)
    assert norm > 0.05  # the clipping scaled the gradients
    for rank in range(W):
        got_loss, got_tower, got_own, got_after, (got_norm, got_clipped) = dist_results[1][rank][
            (name, chunk)
        ]
        torch.testing.assert_close(got_loss, loss, rtol=1e-9, atol=1e-12)
        for g, w in zip(got_tower, tower, strict=True):
            _close(g, w, rtol=1e-8, atol=1e-11)
        assert got_own.keys() == own.keys()
        for k in own:
            torch.testing.assert_close(got_own[k], own[k], rtol=1e-8, atol=1e-11)
        torch.testing.assert_close(got_norm, norm, rtol=1e-8, atol=1e-11)
        for g, w in zip(got_clipped, clipped, strict=True):
            _close(g, w, rtol=1e-8, atol=1e-11)
        for g, w in zip(got_after, after, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-11)


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_fsdp_training_leaves_the_full_model_equal_to_one_process(dist_results, case):
    out, ranks = dist_results
    # one process: budget.shard=fsdp is a no-op (nothing to shard over)
    state, kinds, seen, obj_state = train_run(str(out / "cache"), "fsdp", **TRAIN_CASES[case])
    assert kinds == ["Tensor"] and [s[:2] for s in seen] == [(2, ["Parameter"])]
    for rank in range(W):
        got_state, got_kinds, got_seen, got_obj = ranks[rank][case]
        assert got_kinds == ["Tensor"]  # plain, full tensors: what save_checkpoint writes
        assert got_state.keys() == state.keys()
        for k in state:
            torch.testing.assert_close(got_state[k], state[k], rtol=1e-4, atol=1e-5, msg=k)
        for k in obj_state:
            torch.testing.assert_close(got_obj[k], obj_state[k], rtol=1e-4, atol=1e-5)
        # the validation after step 2 ran on the full, plain weights, on every rank
        ((step, types, total),) = got_seen
        assert step == 2 and types == ["Parameter"]
        assert total == pytest.approx(seen[0][2], rel=1e-5)
    assert all(torch.equal(ranks[0][case][0][k], ranks[1][case][0][k]) for k in state)


def test_shard_is_outside_the_identity_and_the_budget_id():
    base = resolve_config("smoke", None, {}, [])
    fsdp = resolve_config("smoke", None, {}, ["budget.shard=fsdp"])
    assert base.budget.shard == "none" and fsdp.budget.shard == "fsdp"
    assert "shard" not in base.identity_payload()["budget"]
    assert (fsdp.identity, fsdp.budget_id) == (base.identity, base.budget_id)
    with pytest.raises(ConfigError, match="budget.shard"):
        resolve_config("smoke", None, {}, ["budget.shard=zero3"])
