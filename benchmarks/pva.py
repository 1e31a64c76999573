"""PVA matching: brainvlp's vectorised ``pva_matches`` against per-pair greedy loops, on CPU or a GPU.

What it measures, on one batch of brat's training shape (B = G = 32 images and reports, Q = 32 views, S = 20
sentence slots, each report with a random 5..20 valid sentences and the rest padding, float32 cosine
similarities):

(a) brainvlp: ``pva_matches`` over all B x B pairs at once;
(b) reference, iterative argmax: a Python loop over the B x B pairs, each running the greedy algorithm on its
    Q x S matrix with torch (take the argmax, record it, set its row and column to -inf, repeat while
    views and valid sentences remain);
(c) reference, Algorithm 1: the same loop over pairs, each sorting its valid entries once (stable, so ties
    stay in row-major order) and walking the list, keeping an entry when its view and sentence are free;
(d) for context only, Algorithm 1 written literally as in ``tests/test_matching.py``: after each pick the
    list of remaining pairs is rebuilt without the picked view and sentence (on Python floats).

On a GPU, (a) replays the CUDA graph that ``pva_matches`` captures there; the same loop launched op by op
is timed too, for context. All must give identical matches (asserted). Timings are medians over repeats
after one untimed warm-up, with one torch thread by default (``--threads``): on a 2-core machine shared
with a training job, two intra-op threads wait on each other and the vectorised code ran 2.5x to 11x
slower than on one, so one thread gives the stable comparison. The target is (a) >= 100x the faster of (b)
and (c), the loops one would write for speed; (d) rebuilds a Python list of up to Q S pairs after every
pick, interpreter work the others leave to C, and is no fair baseline. Also printed: ``pva_scores``
forward + backward, and the share of a whole CPU brat training step (the quickstart's CNN, a 32-query
Q-Former from MiniLM, B = 32, ITG on) that the brat loss takes.

With ``--device cuda`` every variant runs on the GPU, the data already there, and each timing waits for
the GPU's kernels; the per-pair loops then pay a kernel launch (and, for (b) and (c), a device-to-host
read) per small operation, which is what a training step on a GPU would pay for them.

Run: ``python benchmarks/pva.py [--repeats 20] [--threads 1] [--seed 0] [--device cuda]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from brainvlp.losses.config import LOSSES, BratLossConfig
from brainvlp.losses.matching import _greedy_matches, pva_matches, pva_scores
from brainvlp.models.config import ModelConfig

B, Q, S = 32, 32, 20
MIN_SENTENCES, MAX_SENTENCES = 5, 20
TARGET_SPEEDUP = 100.0


def make_batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine similarities B x B x Q x S of random unit vectors, and the G x S valid-sentence mask."""
    generator = torch.Generator().manual_seed(seed)
    views_BQD = torch.nn.functional.normalize(torch.randn(B, Q, 256, generator=generator), dim=-1)
    sentences_GSD = torch.nn.functional.normalize(torch.randn(B, S, 256, generator=generator), dim=-1)
    sim_BGQS = torch.einsum("bqd,gsd->bgqs", views_BQD, sentences_GSD).contiguous()
    counts_G = torch.randint(MIN_SENTENCES, MAX_SENTENCES + 1, (B,), generator=generator)
    return sim_BGQS, torch.arange(S)[None, :] < counts_G[:, None]


def greedy_argmax_pair(sim_QS: torch.Tensor, valid_S: torch.Tensor) -> torch.Tensor:
    """(b) for one pair: iterative argmax with deletion; ties to the first row-major entry."""
    work_QS = sim_QS.masked_fill(~valid_S, float("-inf"))
    matched_QS = torch.zeros_like(work_QS, dtype=torch.bool)
    for _ in range(min(sim_QS.shape[0], int(valid_S.sum()))):
        q, s = divmod(int(work_QS.argmax()), sim_QS.shape[1])
        matched_QS[q, s] = True
        work_QS[q, :] = float("-inf")
        work_QS[:, s] = float("-inf")
    return matched_QS


def greedy_sorted_pair(sim_QS: torch.Tensor, valid_S: torch.Tensor) -> torch.Tensor:
    """(c) for one pair: brat Algorithm 1, one stable descending sort then a walk over the list."""
    num_views, num_slots = sim_QS.shape
    matched = torch.zeros(num_views * num_slots, dtype=torch.bool)
    wanted = min(num_views, int(valid_S.sum()))
    if wanted == 0:
        return matched.view(num_views, num_slots)
    # Padded entries sort last and are never reached: the first `wanted` free pairs are all valid.
    flat = sim_QS.masked_fill(~valid_S, float("-inf")).flatten()
    order = torch.sort(flat, descending=True, stable=True).indices.tolist()
    view_used, sentence_used, picked = [False] * num_views, [False] * num_slots, []
    for index in order:
        q, s = divmod(index, num_slots)
        if view_used[q] or sentence_used[s]:
            continue
        view_used[q] = sentence_used[s] = True
        picked.append(index)
        if len(picked) == wanted:
            break
    matched[picked] = True
    return matched.view(num_views, num_slots)


def literal_pair(sim_QS: torch.Tensor, valid_S: torch.Tensor) -> torch.Tensor:
    """(d) for one pair: Algorithm 1 step by step on Python floats, the list rebuilt after every pick."""
    num_views, num_slots = sim_QS.shape
    values = sim_QS.tolist()
    valid = valid_S.tolist()
    remaining = sorted(
        ((values[q][s], q, s) for q in range(num_views) for s in range(num_slots) if valid[s]),
        key=lambda pair: -pair[0],
    )
    matched = torch.zeros(num_views, num_slots, dtype=torch.bool)
    while remaining:
        _, q, s = remaining[0]
        matched[q, s] = True
        remaining = [pair for pair in remaining if pair[1] != q and pair[2] != s]
    return matched


def per_pair(greedy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[..., torch.Tensor]:
    def run(sim_BGQS: torch.Tensor, mask_GS: torch.Tensor) -> torch.Tensor:
        rows = [
            torch.stack([greedy(sim_BGQS[b, g], mask_GS[g]) for g in range(sim_BGQS.shape[1])])
            for b in range(sim_BGQS.shape[0])
        ]
        return torch.stack(rows)

    return run


def scores_forward_backward(sim_BGQS: torch.Tensor, mask_GS: torch.Tensor) -> torch.Tensor:
    sim_BGQS = sim_BGQS.detach().requires_grad_(True)
    pva_scores(sim_BGQS, mask_GS).sum().backward()
    return sim_BGQS.grad


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up, untimed
    times = []
    for _ in range(repeats):
        _synchronize()
        start = time.perf_counter()
        fn()
        _synchronize()  # a GPU runs asynchronously: wait for its kernels
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _synchronize() -> None:
    if torch.cuda.is_initialized():
        torch.cuda.synchronize()


def _brat_task() -> tuple[torch.nn.Module, dict[str, torch.Tensor]]:
    """The quickstart's CPU-size model with a brat Q-Former (32 queries, from MiniLM) and one batch."""
    from brainvlp.models.dual_encoder import DualEncoder
    from brainvlp.spec import parse
    from brainvlp.train.task import PretrainTask

    model_config = {
        "vision": {"name": "resnet", "layers": [1, 1, 1, 1], "widths": [16, 32, 64, 128], "max_pool": False},
        "text": {"path": "builtin:minilm", "freeze": True},
        "qformer": {"num_queries": Q},
    }
    model = DualEncoder(parse(ModelConfig, model_config, "model"), in_channels=2, volume_shape=(32, 64, 64))
    task = PretrainTask(model, LOSSES.build(BratLossConfig(itg_weight=1.0)), scale_max=800, augment=None)
    gen = torch.Generator().manual_seed(0)
    counts = torch.randint(MIN_SENTENCES, MAX_SENTENCES + 1, (B,), generator=gen)
    spans = torch.zeros(B, S, 2, dtype=torch.long)
    for b, count in enumerate(counts.tolist()):  # 6-token sentences after [CLS]
        spans[b, :count, 0] = 1 + 6 * torch.arange(count)
        spans[b, :count, 1] = 7 + 6 * torch.arange(count)
    batch = {
        "study_id": [f"s{b}" for b in range(B)],
        "volume": torch.randint(0, 800, (B, 2, 32, 64, 64), generator=gen, dtype=torch.int16),
        "input_ids": torch.randint(1000, 2000, (B, 1 + 6 * S + 1), generator=gen),
        "attention_mask": torch.ones(B, 1 + 6 * S + 1, dtype=torch.long),
        "spans": spans,
        "sentence_mask": torch.arange(S) < counts[:, None],
    }
    return task, batch


def brat_step_share(repeats: int = 3) -> float:
    """Share of a CPU brat training step (forward + backward, B = 32) spent in the brat loss itself."""
    task, batch = _brat_task()
    task.train()

    def step() -> None:
        task.zero_grad(set_to_none=True)
        task(batch)["loss"].backward()

    represented = task.represent(batch, task.loss.inputs)
    inputs = {
        k: v.detach().float().requires_grad_(True) if v.is_floating_point() else v
        for k, v in represented.items()
    }

    def loss_only() -> None:
        outputs = task.loss(inputs)
        sum(v for k, v in outputs.items() if k.endswith("_loss")).backward()

    step_seconds = median_seconds(step, repeats)
    loss_seconds = median_seconds(loss_only, repeats)
    print(f"{'brat CPU step, forward + backward':36}{1e3 * step_seconds:10.1f}")
    print(f"{'  of which the brat loss':36}{1e3 * loss_seconds:10.1f}")
    return loss_seconds / step_seconds


def _verdict(ok: bool | None) -> str:
    return "SKIP" if ok is None else ("PASS" if ok else "FAIL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=20, help="timed runs of (a); (b) and (c) get a quarter"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where every variant runs, e.g. cuda")
    args = parser.parse_args()
    if args.repeats < 1 or args.threads < 1:
        parser.error("--repeats and --threads must be >= 1")
    torch.set_num_threads(args.threads)

    sim_BGQS, mask_GS = (tensor.to(args.device) for tensor in make_batch(args.seed))
    counts = mask_GS.sum(dim=-1)
    print(
        f"B = G = {B}, Q = {Q}, S = {S} (valid sentences {int(counts.min())}..{int(counts.max())}, "
        f"mean {counts.float().mean():.1f}), float32, torch threads {torch.get_num_threads()}, "
        f"on {torch.cuda.get_device_name() if sim_BGQS.is_cuda else 'cpu'}"
    )
    vectorised = pva_matches(sim_BGQS, mask_GS)
    references = {
        "(b) per-pair iterative argmax": per_pair(greedy_argmax_pair),
        "(c) per-pair Algorithm 1 (sort)": per_pair(greedy_sorted_pair),
    }
    for name, reference in references.items():
        assert torch.equal(reference(sim_BGQS, mask_GS).cpu(), vectorised.cpu()), f"{name} matches differ"
    print("matches identical: (a) == (b) == (c); (d) checked below")

    seconds = {
        "(a) pva_matches, vectorised": median_seconds(lambda: pva_matches(sim_BGQS, mask_GS), args.repeats)
    }
    if sim_BGQS.is_cuda:  # (a) replays a CUDA graph there; the same loop launched op by op, for context
        eager = median_seconds(lambda: _greedy_matches(sim_BGQS, mask_GS), args.repeats)
        seconds["(a) without the CUDA graph"] = eager
    for name, reference in references.items():
        seconds[name] = median_seconds(lambda r=reference: r(sim_BGQS, mask_GS), max(1, args.repeats // 4))
    literal = per_pair(literal_pair)
    assert torch.equal(literal(sim_BGQS, mask_GS).cpu(), vectorised.cpu()), "(d) matches differ"
    seconds["(d) literal Algorithm 1 (context)"] = median_seconds(lambda: literal(sim_BGQS, mask_GS), 1)
    backward = median_seconds(lambda: scores_forward_backward(sim_BGQS, mask_GS), args.repeats)
    print(f"{'':36}{'ms':>10}{'ratio':>10}")
    fast = seconds["(a) pva_matches, vectorised"]
    for name, value in seconds.items():
        print(f"{name:36}{1e3 * value:10.2f}{value / fast:9.1f}x")
    print(f"{'pva_scores forward + backward':36}{1e3 * backward:10.2f}")

    speedup = min(seconds[name] for name in references) / fast
    verdict = _verdict(speedup >= TARGET_SPEEDUP)
    print(f"{verdict} (a) >= {TARGET_SPEEDUP:.0f}x the faster reference: {speedup:.1f}x")
    if not sim_BGQS.is_cuda:  # on a GPU, gpu_step.py measures the loss's share of brat's full-size step
        print(f"brat loss share of a CPU training step: {brat_step_share():.1%}")


if __name__ == "__main__":
    main()
