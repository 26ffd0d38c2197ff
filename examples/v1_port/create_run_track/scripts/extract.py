"""Extract each topic's most typical words: a keyword-matching baseline (the seed's
extractStep). v1 script; ported by changing one import."""

import argparse
import json
import os
from collections import Counter

from aml_assets.compat.core import Run  # was: from azureml.core import Run

parser = argparse.ArgumentParser()
parser.add_argument("--input_data", required=True)
parser.add_argument("--output_extract", required=True)
args = parser.parse_args()

with open(args.input_data) as fh:
    posts = json.load(fh)["posts"]
train = [p for i, p in enumerate(posts) if i % 4 != 3]
test = [p for i, p in enumerate(posts) if i % 4 == 3]

counts = {}
for post in train:
    counts.setdefault(post["label"], Counter()).update(post["text"].split())
everywhere = set.intersection(*(set(c) for c in counts.values()))
keywords = {
    label: [w for w, _ in c.most_common() if w not in everywhere][:8] for label, c in counts.items()
}


def predict(text):
    return max(sorted(keywords), key=lambda label: len(set(text.split()) & set(keywords[label])))


accuracy = sum(predict(p["text"]) == p["label"] for p in test) / len(test)
os.makedirs(args.output_extract, exist_ok=True)
with open(os.path.join(args.output_extract, "keywords.json"), "w") as fh:
    json.dump({"kind": "keywords", "keywords": keywords, "accuracy": accuracy}, fh)
Run.get_context().log("accuracy", accuracy)
print(f"keywords: accuracy {accuracy:.2f}")
