"""Training-step time with masks enforced versus without, measured in the same run, on the tiny model.

Usage: python bench/mask_overhead.py [--steps 200] [--repeats 3]
Prints the median seconds per step of each variant and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=64)
    args = parser.parse_args()

    import transformers
    from transformers import AutoModelForTokenClassification

    from lnsub.trainables import pruning
    from lnsub.trainables.testbed.tinybert import ensure_tiny_model

    transformers.logging.set_verbosity_error()
    path = ensure_tiny_model()
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_pretrained(path, num_labels=7)
    params = pruning.prunable_parameters(model)
    masks = pruning.random_masks(params, 0.5, seed=0)
    vocab = model.config.vocab_size
    batches = [(torch.randint(5, vocab, (args.batch_size, args.length)), torch.randint(0, 7, (args.batch_size, args.length)))
               for _ in range(8)]

    enforcer = pruning.MaskEnforcer(model, masks)  # what train_round uses

    def run(enforce: bool) -> float:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        start = time.perf_counter()
        for i in range(args.steps):
            x, y = batches[i % len(batches)]
            loss = model(input_ids=x, labels=y).loss
            loss.backward()
            if enforce:
                enforcer.gradients()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad()
            if enforce:
                enforcer.weights()
        return (time.perf_counter() - start) / args.steps

    run(True), run(False)  # warm-up
    timings = {True: [], False: []}
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        for enforce in (False, True):
            timings[enforce].append(run(enforce))
    plain, masked = statistics.median(timings[False]), statistics.median(timings[True])
    print(f"tiny model: {pruning.prunable_count(params):,} prunable weights, batch {args.batch_size}x{args.length}, "
          f"{args.steps} steps x {args.repeats} repeats")
    print(f"without masks: {1000 * plain:.2f} ms/step")
    print(f"masks enforced: {1000 * masked:.2f} ms/step")
    print(f"overhead ratio: {masked / plain:.3f}")


if __name__ == "__main__":
    main()
