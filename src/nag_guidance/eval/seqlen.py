"""tiny-flux at FluxPipeline's default ``max_sequence_length`` (512) against the length it was trained on (12).

Flux attends to T5 padding tokens, and tiny-flux only ever saw 12 T5 positions; called with the stock default it
sees 500 padding tokens it was never trained with. This measures what that costs: unguided adherence and clean
rate at 4 steps on every distinct prompt of the suite's kinds, per caption form, on reporting seeds.

    python -m nag_guidance.eval.seqlen --seeds 16
"""

from __future__ import annotations

import argparse

import numpy as np

from nag_guidance.eval.suite import ALL_KINDS, REPORTING_SEED_START, pairs, seed_list

LENGTHS = (12, 512)


def prompts() -> dict[str, object]:
    """Every distinct prompt of the suite with its target (the empty prompt left out: it asks for nothing), and
    24 full captions (every shape and colour, a background three palette places on)."""
    from nag_guidance.tiny import data

    chosen = {p.prompt: p.target for p in pairs(ALL_KINDS) if p.prompt}
    for s in data.SHAPES:
        for i, c in enumerate(data.COLOURS):
            b = data.COLOURS[(i + 3) % len(data.COLOURS)]
            chosen[f"a {c} {s} on a {b} background"] = data.Spec(shape=s, colour=c, background=b)
    return chosen


def measure(seeds: list[int], lengths: tuple[int, ...] = LENGTHS, steps: int = 4) -> list[dict]:
    import torch

    from nag_guidance.tiny import data, load_pipeline
    from nag_guidance.tiny.checker import check

    pipe = load_pipeline(model="tiny-flux")
    chosen = prompts()
    rows = [(p, s) for p in chosen for s in seeds]
    results = []
    for length in lengths:
        images = []
        for start in range(0, len(rows), 128):
            chunk = rows[start : start + 128]
            out = pipe(
                [p for p, _ in chunk],
                num_inference_steps=steps,
                guidance_scale=0.0,
                height=data.IMAGE_SIZE,
                width=data.IMAGE_SIZE,
                max_sequence_length=length,
                generator=[torch.Generator().manual_seed(s) for _, s in chunk],
                output_type="np",
            ).images
            images.append(np.round(np.asarray(out) * 255).clip(0, 255).astype(np.uint8))
        reading = check(np.concatenate(images))
        right = reading.matches([chosen[p] for p, _ in rows])
        adherent = right["shape_and_colour"] & right["background"]
        full = np.array(
            [all(v is not None for v in (t.shape, t.colour, t.background)) for t in (chosen[p] for p, _ in rows)]
        )
        results.append(
            {
                "max_sequence_length": length,
                "images": len(rows),
                "adherence": float(adherent.mean()),
                "adherence_full_captions": float(adherent[full].mean()),
                "adherence_open_captions": float(adherent[~full].mean()),
                "clean": float(reading.clean.mean()),
            }
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--seed-start", type=int, default=REPORTING_SEED_START)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    seeds = seed_list(args.seeds, args.seed_start)
    print(f"tiny-flux, 4 steps, unguided, {len(prompts())} prompts x seeds {seeds[0]}-{seeds[-1]}")
    for r in measure(seeds):
        print(
            f"max_sequence_length={r['max_sequence_length']:>3}: adherence {100 * r['adherence']:.1f} % "
            f"(full captions {100 * r['adherence_full_captions']:.1f} %, "
            f"open {100 * r['adherence_open_captions']:.1f} %), clean {100 * r['clean']:.1f} %, {r['images']} images"
        )


if __name__ == "__main__":
    main()
