"""Markdown tables from bench/multilinguality.py's JSON outputs (so docs/testbed.md's numbers are copied, not typed).

Usage: python bench/multilinguality_table.py label=run.json (the last = splits) [label=run.json ...]   # the ablation table
       python bench/multilinguality_table.py --layers label=run.json ...          # per-layer tables
"""

from __future__ import annotations

import json
import sys


def best(rows: list[dict], key: str) -> tuple[float, int]:
    row = max(rows, key=lambda r: r[key])
    return row[key], row["layer"]


def ablation_row(label: str, run: dict) -> str:
    cells = [label, run["id"], f"{run['pretrain_seconds']:.0f}", f"{run['final_loss']:.2f}"]
    for enc in ("model", "random"):
        s = run[enc]["sentences"]["layers"]
        (same, ls), (diff, ld) = best(s, "same_order"), best(s, "different_order")
        cells += [f"{same:.3f} (L{ls})", f"{diff:.3f} (L{ld})"]
    w = run["model"]["words"]["layers"]
    c = run["model"]["sentences"]["centred_layers"]
    cells += [f"{best(w, 'same_order')[0]:.3f}", f"{best(c, 'same_order')[0]:.3f} / {best(c, 'different_order')[0]:.3f}",
              f"{1 / run['model']['sentences']['n']:.3f}"]
    return "| " + " | ".join(cells) + " |"


def layer_table(label: str, run: dict, enc: str) -> list[str]:
    out = [f"\n{label}, {enc} encoder ({run['id']}):\n",
           "| layer | same-order P@1 | different-order P@1 | chance | words same / diff |",
           "| --- | --- | --- | --- | --- |"]
    for s, w in zip(run[enc]["sentences"]["layers"], run[enc]["words"]["layers"]):
        out.append(f"| {s['layer']} | {s['same_order']:.3f} | {s['different_order']:.3f} | {s['chance']:.3f} | "
                   f"{w['same_order']:.3f} / {w['different_order']:.3f} |")
    return out


def main() -> None:
    args = sys.argv[1:]
    layers = args and args[0] == "--layers"
    runs = [(a.rsplit("=", 1)[0], json.load(open(a.rsplit("=", 1)[1]))) for a in args[layers:]]
    if layers:
        for label, run in runs:
            print("\n".join(layer_table(label, run, "model")))
        print("\n".join(layer_table(f"{runs[0][0]} (same architecture)", runs[0][1], "random")))
        return
    print("| run | model id | pretraining s | final loss | same-order best | diff-order best | random same | "
          "random diff | words same | centred same / diff | chance |")
    print("| " + " | ".join(["---"] * 11) + " |")
    for label, run in runs:
        print(ablation_row(label, run))


if __name__ == "__main__":
    main()
