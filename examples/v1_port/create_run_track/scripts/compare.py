"""Compare the two models and keep the better one (the seed's compareStep; ``--param1`` is the
pipeline parameter ``pipeline_arg``: how many keywords per topic the report lists).
v1 script; ported by changing one import."""

import argparse
import json
import os

from aml_assets.compat.core import Run  # was: from azureml.core import Run

parser = argparse.ArgumentParser()
parser.add_argument("--comp_data1", required=True)
parser.add_argument("--comp_data2", required=True)
parser.add_argument("--output_data", required=True)
parser.add_argument("--param1", type=int, default=10)
args = parser.parse_args()

with open(os.path.join(args.comp_data1, "model.json")) as fh:
    model1 = json.load(fh)
with open(os.path.join(args.comp_data2, "keywords.json")) as fh:
    model2 = json.load(fh)
best = max([model1, model2], key=lambda m: m["accuracy"])
report = {
    "accuracy": {model1["kind"]: model1["accuracy"], model2["kind"]: model2["accuracy"]},
    "best": best["kind"],
    "keywords": {k: v[: args.param1] for k, v in model2["keywords"].items()},
}
os.makedirs(args.output_data, exist_ok=True)
with open(os.path.join(args.output_data, "comparison.json"), "w") as fh:
    json.dump(report, fh, indent=1)
run = Run.get_context()
run.log("best_accuracy", best["accuracy"])
run.tag("best", best["kind"])
print(f"best model: {best['kind']} ({best['accuracy']:.2f})")
