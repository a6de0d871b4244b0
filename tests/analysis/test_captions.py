"""The report's readings agree with the claims' verdicts, name what lies below its random baseline, and the
overlap heatmaps colour the off-diagonal range. Verdicts come from analysis/claims.py on planted pair tables."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from lnsub.analysis import captions, claims
from lnsub.analysis.analyze import below_baseline, group_figures
from lnsub.analysis.figures import new_figure, offdiagonal_range, overlap_panel
from lnsub.analysis.overlap import random_jaccard

LANGS = ["syn-en", "syn-ur", "syn-ar", "syn-fr", "syn-de"]


def planted_pairs(effects: list[float], matched: float = 0.40) -> list[dict]:
    """pair_overlap rows of one task at 50% sparsity, one seed: each pair's Jaccard is matched + its effect."""
    rows = []
    for (a, b), effect in zip(combinations(LANGS, 2), effects):
        j = matched + effect
        rows.append({"task": "xnli", "level": "1", "sparsity": "0.5", "kind": "cross_language_same_seed",
                     "language_a": a, "seed_a": "0", "language_b": b, "seed_b": "0", "jaccard": str(j),
                     "random_matched": str(matched), "random_uniform": str(random_jaccard(0.5)),
                     "excess_jaccard": str(effect), "expected_jaccard": str(matched), "ratio": str(j / matched),
                     "excess_jaccard_trained": ""})
    return rows


CASES = {  # ten pairs of five languages: the planted per-pair effects, and the verdict they must give
    "holds": [0.20, 0.21, 0.19, 0.22, 0.18, 0.20, 0.21, 0.19, 0.20, 0.20],
    "does not hold": [-0.20, -0.21, -0.19, -0.22, -0.18, -0.20, -0.21, -0.19, -0.20, -0.20],
    # a positive mean (the numbers alone would read "above"), too spread to tell
    "cannot tell": [0.30, -0.25, 0.28, -0.27, 0.02, 0.31, -0.29, 0.03, -0.26, 0.29],
}


@pytest.mark.parametrize("expected", list(CASES))
def test_the_overlap_reading_says_what_the_verdicts_say(expected):
    pairs = planted_pairs(CASES[expected])
    rows, _ = claims.claims(claims.ClaimInputs("planted", [0.0, 0.5], pairs=pairs))
    verdicts = {r["claim"]: r for r in rows}
    assert verdicts["a"]["verdict"] == verdicts["e"]["verdict"] == expected  # the planting did what it meant
    jaccard = float(np.mean([float(r["jaccard"]) for r in pairs]))
    text = captions.overlap_reading("xnli", 0.5, jaccard, random_jaccard(0.5), verdicts, matched=0.40,
                                    ratio=float(np.mean([float(r["ratio"]) for r in pairs])),
                                    excess=float(np.mean(CASES[expected])))
    wording = {"holds": "Claim ({}) holds:", "does not hold": "Claim ({}) does not hold:",
               "cannot tell": "Claim ({}): cannot tell whether"}
    for claim in ("a", "e"):
        assert wording[expected].format(claim) in text
        for other in set(wording) - {expected}:
            assert wording[other].format(claim) not in text
        assert verdicts[claim]["effect_text"] in text
    assert "share more" not in text


@pytest.mark.parametrize("verdict", ["holds", "does not hold", "cannot tell"])
def test_the_similarity_reading_follows_claim_f_not_the_numbers(verdict):
    row = {"claim": "f", "verdict": verdict, "effect_text": "+0.010 ± 0.020"}
    text = captions.similarity_reading(6, dense=0.30, random=0.05, claims={"f": row})  # dense far above random
    if verdict == "holds":
        assert "Claim (f) holds: the dense model's representations align" in text
    elif verdict == "does not hold":
        assert "Claim (f) does not hold: it is not so that" in text
    else:
        assert "Claim (f): cannot tell whether the dense model's representations align" in text
        assert "holds" not in text
    assert "+0.010 ± 0.020" in text


def test_a_reading_without_the_claim_states_no_verdict():
    text = captions.similarity_reading(6, 0.3, 0.05, {})
    assert "Claim" not in text and "holds" not in text


def _rows(groups: dict[str, float], grouping: str = "component", seeds=(0,)) -> list[dict]:
    return [{"task": "xnli", "grouping": grouping, "group": g, "sparsity": 0.5, "seed": s, "jaccard": j,
             "language_a": "syn-en", "language_b": "syn-ur"} for g, j in groups.items() for s in seeds]


def test_a_group_below_its_random_baseline_is_flagged():
    rows = _rows({"query": 0.52, "key": 0.50, "pooler": 0.21})
    excess = [{"task": "xnli", "grouping": "component", "group": g, "sparsity": 0.5,
               "kind": "cross_language_same_seed", "random_matched": m}
              for g, m in (("query", 0.33), ("key", 0.33), ("pooler", 0.30))]
    bars = group_figures(rows, excess, "xnli", 0.5)
    assert below_baseline(bars, random_jaccard(0.5)) == [("pooler", 0.21, 0.30)]
    assert captions.below_baseline_phrase(below_baseline(bars, 0.333)) == \
        "Below its random baseline: pooler 0.210 < 0.300."
    # without a matched baseline the group is read against d/(2-d)
    assert below_baseline(group_figures(rows, [], "xnli", 0.5), random_jaccard(0.5)) == \
        [("pooler", 0.21, random_jaccard(0.5))]


def test_nothing_is_flagged_when_everything_is_above_its_baseline():
    bars = group_figures(_rows({"query": 0.52, "key": 0.50, "pooler": 0.34}), [], "xnli", 0.5)
    assert below_baseline(bars, random_jaccard(0.5)) == []
    assert captions.below_baseline_phrase([]) == ""
    text = captions.overlap_reading("xnli", 0.5, 0.6, random_jaccard(0.5), {}, matched=0.4)
    assert "Below" not in text


def test_an_overlap_below_random_is_named_in_the_reading():
    text = captions.overlap_reading("ner", 0.5, 0.30, random_jaccard(0.5), {}, matched=0.36)
    assert "Below its random baseline: ner across languages 0.300 < 0.360." in text


def test_error_bars_are_the_spread_over_seeds():
    rows = _rows({"query": 0.5}, seeds=(0,)) + [{**r, "seed": 1, "jaccard": 0.7} for r in _rows({"query": 0.5})]
    [(name, mean, err, base)] = group_figures(rows, [], "xnli", 0.5)["component"]
    assert (name, base) == ("query", None)
    assert mean == pytest.approx(0.6) and err == pytest.approx(np.std([0.5, 0.7], ddof=1))


def test_the_heatmap_colours_span_the_off_diagonal_range():
    m = np.array([[1.0, 0.42, 0.31], [0.42, 1.0, 0.55], [0.31, 0.55, 1.0]])
    assert offdiagonal_range([m]) == (0.31, 0.55)
    ax = new_figure(3, 3).add_subplot()
    im = overlap_panel(ax, m, ["a", "b", "c"], *offdiagonal_range([m]), baseline=0.35)
    assert (im.norm.vmin, im.norm.vmax) == (0.31, 0.55)
    shown = np.ma.getmaskarray(im.get_array())
    assert shown.diagonal().all() and not shown[~np.eye(3, dtype=bool)].any()  # the diagonal is not coloured
    boxed = [p for p in ax.patches if p.get_edgecolor()[:3] == (1.0, 0.0, 0.0)]
    assert len(boxed) == 2  # (a, c) and (c, a): 0.31 < 0.35, and nothing else


def test_the_range_of_several_panels_is_shared_and_one_value_still_has_a_scale():
    assert offdiagonal_range([np.array([[1, .4], [.4, 1]]), np.array([[1, .6], [.6, 1]])]) == (0.4, 0.6)
    lo, hi = offdiagonal_range([np.array([[1, .5], [.5, 1]])])
    assert lo < 0.5 < hi and hi - lo < 0.02


def test_ticket_range_reads_sensibly():
    assert captions.range_phrase([0.3, 0.3, 0.3], "Sparsest winning tickets") == "Sparsest winning tickets are all at 30%"
    assert captions.range_phrase([0.3], "Sparsest winning tickets") == "Sparsest winning tickets is at 30%"
    assert captions.range_phrase([0.2, 0.3, 0.5], "Sparsest winning tickets") == \
        "Sparsest winning tickets range from 20% to 50% (median 30%)"


def test_a_score_rising_with_sparsity_is_explained_by_the_carried_head():
    series = {"syn-en": ([0, .1, .2], [0.60, 0.64, 0.70]), "syn-ur": ([0, .1, .2], [0.70, 0.66, 0.62])}
    assert captions.rising(series, greater_is_better=True) == ["syn-en"]
    assert captions.rising(series, greater_is_better=False) == ["syn-ur"]  # perplexity: lower is better
    note = captions.head_carryover_note(["syn-en"])
    assert "syn-en" in note and "task head" in note
    assert captions.head_carryover_note([]) == ""
