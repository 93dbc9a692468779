"""The model card's table: one row per method, one column group per held-out data set, from the JSON files
that ``openkbp.py`` (OpenKBP validation) and ``demo_accuracy.py`` (the synthetic test split and TG-119) write.

Columns: OpenKBP dose score and DVH score (Gy, as the challenge computes them), the synthetic held-out
GDP-HMM MAE with the MAE inside the PTVs in brackets, TG-119's GDP-HMM MAE, and the seconds per OpenKBP
patient (the prediction alone). A method missing from one file has a dash there.

Run: ``python Testing/benchmarks/model_card_table.py --openkbp FILE --synthetic FILE`` (prints markdown);
``Testing/benchmarks/v4_table.sh`` makes both files and then calls this.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _gy(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def table(openkbp: dict, synthetic: dict) -> str:
    """Markdown rows of every method of either file, in the order they appear (OpenKBP's first)."""
    kbp, held, tg = openkbp["mean"], synthetic["mean"].get("held-out all", {}), synthetic["mean"].get("TG119", {})
    lines = ["| method | OpenKBP dose score | OpenKBP DVH score | synthetic GDP-HMM MAE (PTV MAE) | TG-119 | s / OpenKBP patient |",
             "| --- | --- | --- | --- | --- | --- |"]
    for method in dict.fromkeys([*kbp, *held, *tg]):
        k, h, t = kbp.get(method, {}), held.get(method, {}), tg.get(method, {})
        synth = "–" if not h else f"{_gy(h.get('gdp_hmm_mae_gy'))} ({_gy(h.get('ptv_mae_gy'))})"
        seconds = "–" if not k else f"{k['seconds']:.1f}"
        lines.append(f"| {method} | {_gy(k.get('dose_score_gy'))} | {_gy(k.get('dvh_score_gy'))} | {synth} | "
                     f"{_gy(t.get('gdp_hmm_mae_gy'))} | {seconds} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--openkbp", required=True, help="JSON of openkbp.py")
    parser.add_argument("--synthetic", required=True, help="JSON of demo_accuracy.py (with --tg119)")
    args = parser.parse_args()
    print(table(json.loads(Path(args.openkbp).read_text()), json.loads(Path(args.synthetic).read_text())))


if __name__ == "__main__":
    main()
