"""The chunked LM-head + KD loss equals the plain loss on materialised logits: value, KL, CE and every gradient, for
any chunk size, both loss terms, a temperature, heads with and without bias, with and without per-token KL weights;
and stage 3 with it trains the same."""

import pytest
import torch

import mohawk
from mohawk.stages.distillation import KnowledgeDistillation, LossWeights, copy_weights, distillation_loss
from mohawk.stages.fused_loss import fused_distillation_loss
from tests.utils import VOCAB, tiny_teacher


@pytest.mark.parametrize("chunk", [1, 7, 64])
@pytest.mark.parametrize("kd,ce,T", [(1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (0.7, 0.3, 2.0)])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("copy", [0.0, 3.0])
def test_equals_the_plain_loss(chunk, kd, ce, T, bias, copy):
    """With copy weights, catches a fused KL that divides by the token count instead of sum(w), weights the forward
    sums but not the analytic gradient (or the reverse), or pairs each chunk with another chunk's weights."""
    torch.manual_seed(0)
    b, L, H, Ht, V = 2, 9, 12, 10, 50
    head, t_head = torch.nn.Linear(H, V, bias=bias).double(), torch.nn.Linear(Ht, V, bias=not bias).double()
    h = torch.randn(b, L, H, dtype=torch.float64, requires_grad=True)
    th = torch.randn(b, L, Ht, dtype=torch.float64) * 3
    ids = torch.randint(0, 3 if copy else V, (b, L))  # copy: a small alphabet, so that n-grams repeat
    weights = copy_weights(ids, copy, context=1)[0] if copy else None
    if copy:
        assert 0 < int((weights > 1).sum()) < weights.numel()
    teacher_logits = t_head(th) if kd else None
    want = distillation_loss(head(h), teacher_logits, ids, T, kd, ce, weights)
    gw = torch.autograd.grad(want[0], [h, *head.parameters()])
    got = fused_distillation_loss(h, head, th if kd else None, t_head if kd else None, ids, T, kd, ce, chunk, weights)
    gg = torch.autograd.grad(got[0], [h, *head.parameters()])
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y.to(x.dtype))
    for x, y in zip(gg, gw, strict=True):
        torch.testing.assert_close(x, y)


@pytest.mark.parametrize("copy", [0.0, 2.0])
def test_stage3_with_chunks_trains_as_without(copy):
    torch.manual_seed(0)
    teacher = tiny_teacher("phi")  # an LM head with bias, on both sides
    ids = torch.randint(0, 4 if copy else VOCAB, (2, 16))
    grads = []
    for chunk in (0, 5):
        torch.manual_seed(1)  # the same student both times
        student = mohawk.from_teacher(teacher)
        stage = KnowledgeDistillation(
            student, mohawk.teachers.adapter_for(teacher), LossWeights(0.8, 0.2, copy=copy), loss_chunk=chunk
        )
        loss, metrics = stage.loss(ids)
        loss.backward()
        assert ("copy_share" in metrics) == bool(copy)
        grads.append((loss.item(), metrics["kl"].item(), {n: p.grad.clone() for n, p in student.named_parameters()}))
    (l0, k0, g0), (l1, k1, g1) = grads
    assert abs(l0 - l1) < 1e-5 and abs(k0 - k1) < 1e-5
    assert g0.keys() == g1.keys()
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-5, rtol=1e-4, msg=n)
