"""How much of each state does ablating a model's refusal direction remove? Reads docs/steer_eval*.json.

For each model that ``scripts/eval_steer.py`` measured, the refusal direction is recomputed with
the library defaults restricted to the recorded (layer, position), which gives the same difference
in means (same prompts, same seeded split), and then:

- the direction's largest coordinate (index and share of the unit vector): one dominant coordinate
  means the direction is mostly one residual-stream dimension;
- on the first ``--n`` test-split normal prompts, at every layer, the mean of |x . u| / ||x|| over
  positions (the first token apart from the rest): the share of each state's norm that ablation
  projects away. A share near 1 leaves little of the state, whatever the direction means.

Writes ``docs/direction_diagnostics.json``.

Usage:
    python scripts/direction_diagnostics.py [--n 8]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

import ihs_sight as ihs
from ihs_sight.prompts import encode

ROOT = Path(__file__).resolve().parents[1]
FILES = ("steer_eval.json", "steer_eval_gemma.json")


def shares(model: ihs.Model, texts: list[str], unit: torch.Tensor, system_prompt: str | None) -> dict[str, Any]:
    """Per layer: mean |x . u| / ||x|| at the first token and over the other positions (plain transformers)."""
    first, rest = torch.zeros(model.n_layers + 1, dtype=torch.float64), torch.zeros(model.n_layers + 1,
                                                                                     dtype=torch.float64)
    u = unit.double()
    for ids in encode(model.tokenizer, texts, system_prompt=system_prompt):
        with torch.no_grad():
            hidden = model.hf(input_ids=torch.tensor([ids]), output_hidden_states=True).hidden_states
        for layer in range(model.n_layers):  # hidden_states[L] has the final norm applied: left out
            x = hidden[layer][0].double()
            share = (x @ u).abs() / x.norm(dim=-1)
            first[layer] += share[0]
            rest[layer] += share[1:].mean()
    n = len(texts)
    return {"first_token": [round(float(v) / n, 4) for v in first[:-1]],
            "other_positions": [round(float(v) / n, 4) for v in rest[:-1]],
            "layers": list(range(model.n_layers))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8)
    args = ap.parse_args()
    torch.set_num_threads(2)
    texts = ihs.load_prompts().test.normal.texts[: args.n]
    out: dict[str, Any] = {"n_prompts": args.n, "models": {}}
    for file in FILES:
        recorded = json.loads((ROOT / "docs" / file).read_text(encoding="utf-8"))
        model = ihs.load_model(recorded["model"])
        layer, position = recorded["refusal"]["layer"], recorded["refusal"]["position"]
        direction = ihs.refusal_direction(model, layers=[layer], positions=[position], progress=False)
        assert abs(direction.norm - recorded["refusal"]["norm"]) <= 1e-3 * recorded["refusal"]["norm"]
        unit = direction.unit
        top = unit.abs().topk(3)
        entry = {"file": file, "layer": layer, "position": position, "norm": direction.norm,
                 "top_coordinates": [int(i) for i in top.indices],
                 "top_shares": [round(float(v), 4) for v in top.values],
                 "ablated_share": shares(model, texts, unit, direction.system_prompt)}
        out["models"][recorded["model"]] = entry
        print(recorded["model"], "top coordinate", entry["top_coordinates"][0], entry["top_shares"][0],
              "ablated share at its layer: other positions", entry["ablated_share"]["other_positions"][layer])
    path = ROOT / "docs" / "direction_diagnostics.json"
    path.write_text(json.dumps(out, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
