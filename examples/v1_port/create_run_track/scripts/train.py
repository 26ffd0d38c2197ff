"""Train a word-count naive Bayes classifier on the posts (the seed's train.py step).

v1 script; ported by changing one import (`from azureml.core import Run`)."""

import argparse
import json
import math
import os
from collections import Counter

from aml_assets.compat.core import Run  # was: from azureml.core import Run

parser = argparse.ArgumentParser()
parser.add_argument("--input", required=True, help="the posts file (a DataReference, mounted)")
parser.add_argument("--output", required=True, help="folder for the model (a PipelineData)")
args = parser.parse_args()

with open(args.input) as fh:
    posts = json.load(fh)["posts"]
train = [p for i, p in enumerate(posts) if i % 4 != 3]
test = [p for i, p in enumerate(posts) if i % 4 == 3]

labels = sorted({p["label"] for p in train})
words = {label: Counter() for label in labels}
for post in train:
    words[post["label"]].update(post["text"].split())
vocabulary = sorted({w for counts in words.values() for w in counts})


def predict(text):
    def score(label):
        total = sum(words[label].values()) + len(vocabulary)
        return sum(math.log((words[label][w] + 1) / total) for w in text.split())

    return max(labels, key=score)


accuracy = sum(predict(p["text"]) == p["label"] for p in test) / len(test)
os.makedirs(args.output, exist_ok=True)  # v1's advice for PipelineData folders
with open(os.path.join(args.output, "model.json"), "w") as fh:
    json.dump({"kind": "naive_bayes", "words": {k: dict(v) for k, v in words.items()},
               "accuracy": accuracy}, fh)
run = Run.get_context()
run.log("accuracy", accuracy)
print(f"naive Bayes: {len(train)} training posts, accuracy {accuracy:.2f} on {len(test)}")
