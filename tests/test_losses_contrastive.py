"""Dense contrastive loss (IDF eq. 1-2) against a naive per-point loop, hand values, edge cases, queue."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdtrack.losses.contrastive import DenseContrastiveLoss, gather_points
from kdtrack.data.targets import collate_targets, encode_targets


def naive_loss(points, keys, queue, queue_keys, tau, batch_negatives=False, nn_positives=0, key_points=None):
    """IDF eq. 1-2 written literally: for every anchor v, mean over the other points of its person.

    ``batch_negatives``: every OTHER person of the batch is one more negative, its mean point
    (renormalised, with gradient). ``nn_positives`` j: the j queue entries (other people) most similar to the
    person's mean are positives of its every anchor, and no longer negatives (NNCLR). ``key_points`` (MoCo's
    keys): the other points and the batch negatives' means are taken from these rows instead, without gradient."""
    v = F.normalize(points.double(), dim=1)
    k = v if key_points is None else F.normalize(key_points.double(), dim=1).detach()
    q = queue.double()
    people = {}
    for a in range(len(v)):
        people.setdefault(int(keys[a]), []).append(k[a])
    means = {key: F.normalize(torch.stack(pts).sum(0), dim=0) for key, pts in people.items()}
    neighbours = {}
    for key, mean in means.items():
        others = [j for j in range(len(q)) if queue_keys[j] != -1 and queue_keys[j] != key]
        others.sort(key=lambda j: -float(mean.detach() @ q[j]))
        neighbours[key] = others[:nn_positives]
    per_anchor = []
    for a in range(len(v)):
        near = neighbours[int(keys[a])]
        near_keys = {int(queue_keys[j]) for j in near}
        negs = [q[j] for j in range(len(q))
                if queue_keys[j] != -1 and queue_keys[j] != keys[a] and int(queue_keys[j]) not in near_keys]
        if batch_negatives:
            negs += [mean for key, mean in means.items() if key != int(keys[a])]
        neg_sum = sum((torch.exp(v[a] @ n / tau) for n in negs), torch.tensor(0.0, dtype=torch.float64))
        terms = []
        for p in range(len(v)):
            if p == a or keys[p] != keys[a]:
                continue
            e = torch.exp(v[a] @ k[p] / tau)
            terms.append(-torch.log(e / (e + neg_sum)))
        if terms:
            for j in near:
                e = torch.exp(v[a] @ q[j] / tau)
                terms.append(-torch.log(e / (e + neg_sum)))
            per_anchor.append(torch.stack(terms).mean())
    return torch.stack(per_anchor).mean() if per_anchor else torch.tensor(0.0, dtype=torch.float64)


def _loss_with_queue(dim, queue, queue_keys, tau=0.07, chunk=4096, batch_negatives=False, nn_positives=0):
    loss = DenseContrastiveLoss(dim, queue_size=len(queue), temperature=tau, anchor_chunk=chunk,
                                batch_negatives=batch_negatives, nn_positives=nn_positives)
    loss.queue.copy_(queue)
    loss.queue_keys.copy_(queue_keys)
    loss.queue_fill.fill_(int((queue_keys != -1).sum()))
    return loss


@pytest.mark.parametrize("chunk,batch_negatives,nn_positives",
                         [(4096, False, 0), (7, False, 0), (4096, True, 0), (7, True, 0), (4096, True, 1),
                          (7, True, 3), (7, False, 40)])
def test_matches_naive_loop(chunk, batch_negatives, nn_positives):
    g = torch.Generator().manual_seed(0)
    dim, m = 8, 40
    points = torch.randn(m, dim, generator=g)
    keys = torch.randint(0, 9, (m,), generator=g) * 1000  # some persons share keys with the queue
    keys[0] = 77777  # a person with one single point: no anchor
    queue = F.normalize(torch.randn(30, dim, generator=g), dim=1)
    queue_keys = torch.randint(0, 12, (30,), generator=g) * 1000
    queue_keys[-5:] = -1  # unused slots
    loss = _loss_with_queue(dim, queue, queue_keys, tau=0.07, chunk=chunk, batch_negatives=batch_negatives,
                            nn_positives=nn_positives)
    p = points.clone().requires_grad_(True)
    out = loss.loss_from_points(p, keys)
    ref = naive_loss(points, keys, queue, queue_keys, 0.07, batch_negatives, nn_positives)
    assert out["id"].item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
    # Gradients agree with the naive loop's autograd too (through the batch negatives' means).
    p_ref = points.double().clone().requires_grad_(True)
    naive_loss(p_ref, keys, queue, queue_keys, 0.07, batch_negatives, nn_positives).backward()
    out["id"].backward()
    assert torch.allclose(p.grad.double(), p_ref.grad, atol=1e-5)
    assert out["id/anchors"].item() == m - 1


@pytest.mark.parametrize("batch_negatives", [False, True])
def test_key_positives_match_naive_loop(batch_negatives):
    """MoCo's positives: the key encoder's vector of the person's other rows, the in-batch negatives the key
    encoder's means; the gradient reaches the student's points only."""
    g = torch.Generator().manual_seed(1)
    dim, m = 8, 30
    points = torch.randn(m, dim, generator=g)
    key_points = points + 0.5 * torch.randn(m, dim, generator=g)
    keys = torch.randint(0, 7, (m,), generator=g) * 1000
    queue = F.normalize(torch.randn(20, dim, generator=g), dim=1)
    queue_keys = torch.randint(0, 9, (20,), generator=g) * 1000
    loss = _loss_with_queue(dim, queue, queue_keys, tau=0.1, chunk=5, batch_negatives=batch_negatives)
    p, kp = points.clone().requires_grad_(True), key_points.clone().requires_grad_(True)
    out = loss.loss_from_points(p, keys, kp)
    ref_p = points.double().clone().requires_grad_(True)
    ref = naive_loss(ref_p, keys, queue, queue_keys, 0.1, batch_negatives, key_points=key_points)
    assert out["id"].item() == pytest.approx(ref.item(), abs=1e-5, rel=1e-5)
    assert out["id"].item() != pytest.approx(loss.loss_from_points(points, keys)["id"].item(), abs=1e-3)
    out["id"].backward()
    ref.backward()
    assert torch.allclose(p.grad.double(), ref_p.grad, atol=1e-5)
    assert kp.grad is None


def test_key_positives_hand_value_and_module_switch():
    # tau = 1; person 3: student v1 = (1, 0), v2 = (0, 1); keys k1 = (0, 1), k2 = (1, 0); queue n = (1, 1)/sqrt2.
    # v1's positive is k2 (v1.k2 = 1), v2's is k1 (1): l = -log(e^1 / (e^1 + e^0.70711)) = log(1 + e^-0.29289)
    # for both. With the student's own vectors (v1.v2 = 0): log(1 + e^0.70711).
    students, key_rows = torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = _loss_with_queue(2, F.normalize(torch.tensor([[1.0, 1.0]]), dim=1), torch.tensor([5]), tau=1.0)
    got = loss.loss_from_points(students, torch.tensor([3, 3]), key_rows)["id"].item()
    assert got == pytest.approx(math.log(1 + math.exp(math.sqrt(0.5) - 1)), rel=1e-6)
    # The module's switch: forward_points uses the key rows only with key_positives, and needs them then.
    loss.key_positives = True
    assert loss.forward_points(students, torch.tensor([3, 3]), update_queue=False, key_points=key_rows)["id"].item() \
        == pytest.approx(got, rel=1e-6)
    with pytest.raises(ValueError, match="key_positives"):
        loss.forward_points(students, torch.tensor([3, 3]), update_queue=False)
    loss.key_positives = False
    assert loss.forward_points(students, torch.tensor([3, 3]), update_queue=False, key_points=key_rows)["id"].item() \
        == pytest.approx(math.log(1 + math.exp(math.sqrt(0.5))), rel=1e-6)


def test_hand_value_two_points_one_negative():
    # tau = 1, v1 = (1, 0), v2 = (0, 1): v1.v2 = 0; negative n = (1, 1)/sqrt2: v.n = 0.70711 for both.
    # l(v1) = l(v2) = -log(e^0 / (e^0 + e^0.70711)) = log(1 + 2.02811) = 1.10793
    loss = _loss_with_queue(2, F.normalize(torch.tensor([[1.0, 1.0], [0.0, 0.0]]), dim=1), torch.tensor([5, -1]), tau=1.0)
    out = loss.loss_from_points(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3, 3]))
    assert out["id"].item() == pytest.approx(math.log(1 + math.exp(math.sqrt(0.5))), rel=1e-6)
    # The same negative under the anchor's own key is excluded -> no negatives -> loss 0.
    loss.queue_keys[0] = 3
    assert loss.loss_from_points(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3, 3]))["id"].item() == 0.0


def test_hand_value_queue_neighbour_as_positive():
    # tau = 1; person 3: v1 = (1, 0), v2 = (0, 1), mean m = (1, 1)/sqrt2. Queue: a = (1, 0) (key 5),
    # b = (-1, 0) (key 6); m.a = 0.70711 > m.b: a is the neighbour, a positive, and leaves the negatives.
    # l(v1) = mean(-log(e^0/(e^0 + e^{-1})), -log(e^1/(e^1 + e^{-1}))) = (log(1 + e^-1) + log(1 + e^-2)) / 2
    # l(v2) = mean(-log(e^0/(e^0 + e^0)), -log(e^0/(e^0 + e^0))) = log 2
    queue = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    loss = _loss_with_queue(2, queue, torch.tensor([5, 6]), tau=1.0, nn_positives=1)
    out = loss.loss_from_points(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3, 3]))
    l_v1 = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 2
    assert out["id"].item() == pytest.approx((l_v1 + math.log(2)) / 2, rel=1e-6)
    # Off, a is a negative again: l(v1) = log(1 + e^1 + e^-1), l(v2) = log(1 + e^0 + e^0)
    loss.nn_positives = 0
    expected = (math.log(1 + math.e + math.exp(-1)) + math.log(3)) / 2
    assert loss.loss_from_points(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3, 3]))["id"].item() == \
        pytest.approx(expected, rel=1e-6)
    # An empty queue gives no neighbour: the loss is exactly the plain one (no negative -> 0).
    empty = DenseContrastiveLoss(2, queue_size=2, temperature=1.0, batch_negatives=False, nn_positives=2)
    assert empty.loss_from_points(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([3, 3]))["id"].item() == 0.0
    with pytest.raises(ValueError, match="nn_positives"):
        DenseContrastiveLoss(2, queue_size=2, nn_positives=-1)


def test_hand_value_batch_negative_without_queue():
    # tau = 1, empty queue. Person 3: v1 = (1, 0), v2 = (0, 1); person 4: w1 = w2 = (1, 0) (mean (1, 0)).
    # Person 3's mean is (1, 1)/sqrt2.
    # l(v1) = -log(e^0 / (e^0 + e^{v1.(1,0)})) = log(1 + e^1) = 1.31326; l(v2) = log(1 + e^0) = 0.69315
    # l(w1) = l(w2) = -log(e^1 / (e^1 + e^{0.70711})) = log(1 + e^{0.70711 - 1}) = 0.55436
    # l_id = mean of the four anchors = (1.31326 + 0.69315 + 2 * 0.55436) / 4 = 0.77878
    pts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    keys = torch.tensor([3, 3, 4, 4])
    loss = DenseContrastiveLoss(2, queue_size=4, temperature=1.0)  # batch_negatives defaults to True
    expected = (math.log(1 + math.e) + math.log(2) + 2 * math.log(1 + math.exp(math.sqrt(0.5) - 1))) / 4
    assert loss.loss_from_points(pts, keys)["id"].item() == pytest.approx(expected, rel=1e-6)
    # The paper's text (queue only): an empty queue means no negative, loss 0.
    loss.batch_negatives = False
    assert loss.loss_from_points(pts, keys)["id"].item() == 0.0


def test_empty_queue_no_people_single_point_are_finite():
    loss = DenseContrastiveLoss(4, queue_size=8, batch_negatives=False)
    pts = torch.randn(3, 4, requires_grad=True)
    out = loss.loss_from_points(pts, torch.tensor([1, 1, 2]))  # empty queue: -log(e^s/e^s) = 0
    assert out["id"].item() == 0.0
    out["id"].backward()
    assert torch.isfinite(pts.grad).all()
    none = loss.loss_from_points(torch.zeros(0, 4, requires_grad=True), torch.zeros(0, dtype=torch.long))
    assert none["id"].item() == 0.0 and none["id"].requires_grad
    loss.enqueue(F.normalize(torch.randn(2, 4), dim=1), torch.tensor([10, 11]))
    single = loss.loss_from_points(torch.randn(1, 4, requires_grad=True), torch.tensor([1]))
    assert single["id"].item() == 0.0 and single["id/anchors"].item() == 0


def test_unused_queue_slots_count_for_nothing_without_a_host_read():
    # unused slots are masked on the device (no read of whether any slot is used, no slice of the used ones):
    # the loss and its gradient are those of a queue holding the used slots alone, wherever the unused ones are
    g = torch.Generator().manual_seed(1)
    points, keys = torch.randn(24, 8, generator=g), torch.randint(0, 5, (24,), generator=g)
    used = F.normalize(torch.randn(20, 8, generator=g), dim=1)
    used_keys = torch.randint(3, 9, (20,), generator=g)
    queue, queue_keys = torch.zeros(26, 8), torch.full((26,), -1)
    slots = torch.randperm(26, generator=g)[:20]
    queue[slots], queue_keys[slots] = used, used_keys
    results = []
    for loss in (_loss_with_queue(8, used, used_keys), _loss_with_queue(8, queue, queue_keys)):
        p = points.clone().requires_grad_(True)
        out = loss.loss_from_points(p, keys)["id"]
        out.backward()
        results.append((out.detach(), p.grad))
    assert torch.allclose(results[0][0], results[1][0], rtol=1e-6, atol=0)
    assert torch.allclose(results[0][1], results[1][1], rtol=1e-5, atol=1e-7)


def test_queue_fifo_wraps_and_keeps_last():
    loss = DenseContrastiveLoss(2, queue_size=4)
    e = lambda n, s: torch.full((n, 2), float(s))  # noqa: E731
    loss.enqueue(e(3, 1), torch.tensor([1, 2, 3]))
    assert loss.queue_fill.item() == 3 and loss.queue_ptr.item() == 3
    loss.enqueue(e(2, 2), torch.tensor([4, 5]))  # slot 3 then wraps to slot 0
    assert loss.queue_keys.tolist() == [5, 2, 3, 4] and loss.queue_ptr.item() == 1 and loss.queue_fill.item() == 4
    loss.enqueue(e(6, 3), torch.arange(10, 16))  # more than Q: the last 4 are kept
    assert loss.queue_keys.tolist() == [12, 13, 14, 15] and loss.queue_ptr.item() == 0


def test_forward_on_maps_two_views_and_queue_update():
    # Two "views" of one image (the second mirrored), stacked in one batch; keys shared across views.
    torch.manual_seed(0)
    boxes = np.array([[8, 8, 40, 60], [50, 4, 90, 56]], np.float32)
    mirrored = boxes.copy()
    mirrored[:, [0, 2]] = 96 - boxes[:, [2, 0]]
    keys = np.array([100, 101])
    batch = collate_targets([encode_targets(b, keys, None, (64, 96), max_objects=4) for b in (boxes, mirrored)])
    emb = F.normalize(torch.randn(2, 6, 16, 24), dim=1).requires_grad_(True)
    loss = DenseContrastiveLoss(6, queue_size=16)
    loss.enqueue(F.normalize(torch.randn(5, 6), dim=1), torch.arange(5))
    points, pkeys = gather_points(emb, batch["region_index"], batch["region_mask"], batch["ids"])
    assert len(points) == int(batch["region_mask"].sum()) and set(pkeys.tolist()) == {100, 101}
    ref = naive_loss(points.detach(), pkeys, loss.queue.clone(), loss.queue_keys.clone(), 0.07, batch_negatives=True)
    out = loss(emb, batch["region_index"], batch["region_mask"], batch["ids"])
    assert out["id"].item() == pytest.approx(ref.item(), abs=1e-5)
    out["id"].backward()
    assert emb.grad.abs().sum() > 0
    # Two persons were pushed (one mean embedding each), after the 5 existing entries.
    assert loss.queue_fill.item() == 7 and loss.queue_keys[5:7].tolist() == [100, 101]
    mean100 = F.normalize(points[pkeys == 100].detach().mean(0), dim=0)
    assert torch.allclose(loss.queue[5], mean100, atol=1e-6)
    # Unknown people (id -1) contribute no point.
    batch["ids"][:] = -1
    assert gather_points(emb, batch["region_index"], batch["region_mask"], batch["ids"])[0].shape == (0, 6)


def test_minimising_pulls_views_together():
    # Free embedding maps for two views of two people; the loss against a fixed queue of other
    # people must fall and leave each person's points closer to each other than to the other person.
    torch.manual_seed(0)
    boxes = np.array([[8, 8, 40, 60], [50, 4, 90, 56]], np.float32)
    batch = collate_targets([encode_targets(boxes, np.array([1, 2]), None, (64, 96), max_objects=2)] * 2)
    raw = torch.randn(2, 8, 16, 24, requires_grad=True)
    loss = DenseContrastiveLoss(8, queue_size=64)
    loss.enqueue(F.normalize(torch.randn(64, 8), dim=1), torch.arange(100, 164))
    opt = torch.optim.Adam([raw], lr=0.05)
    first = None
    for _ in range(60):
        out = loss(F.normalize(raw, dim=1), batch["region_index"], batch["region_mask"], batch["ids"], update_queue=False)
        first = out["id"].item() if first is None else first
        opt.zero_grad()
        out["id"].backward()
        opt.step()
    assert out["id"].item() < 0.2 * first
    pts, keys = gather_points(F.normalize(raw.detach(), dim=1), batch["region_index"], batch["region_mask"], batch["ids"])
    sim = pts @ pts.T
    same = keys[:, None] == keys[None, :]
    assert sim[same].mean() > sim[~same].mean() + 0.5
