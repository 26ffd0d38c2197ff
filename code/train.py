"""Train a Titanic survival classifier on the prepared data (the sample's CPU-cluster step).

Run it on its own (offline) with:
    python code/train.py --prepared /path/to/prepared_parquet_dir --model_dir /tmp/model
"""

import argparse
import json
import pickle
import sys
from pathlib import Path

import pandas as pd
import sklearn
from sklearn.ensemble import RandomForestClassifier
from sklearn.metrics import accuracy_score
from sklearn.model_selection import train_test_split

from amlrun import Run

FEATURES = ["Pclass", "Sex", "Age", "SibSp", "Parch", "Fare", "Embarked"]

parser = argparse.ArgumentParser()
parser.add_argument("--prepared", required=True, help="folder of prepared Parquet files")
parser.add_argument("--model_dir", required=True)
parser.add_argument("--n_estimators", type=int, default=200)
parser.add_argument("--test_size", type=float, default=0.2)
args = parser.parse_args()

run = Run.get_context()
# Which environment the step ran in, in its log.
print(f"python {sys.version.split()[0]}; scikit-learn {sklearn.__version__}, pandas {pd.__version__}")
files = sorted(p for p in Path(args.prepared).rglob("*.parquet"))
data = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
print(f"training on {len(data)} rows")

X_train, X_test, y_train, y_test = train_test_split(
    data[FEATURES], data["Survived"], test_size=args.test_size, random_state=42, stratify=data["Survived"]
)
model = RandomForestClassifier(n_estimators=args.n_estimators, max_depth=6, random_state=42)
model.fit(X_train, y_train)
accuracy = float(accuracy_score(y_test, model.predict(X_test)))
print(f"held-out accuracy: {accuracy:.4f} on {len(X_test)} passengers")

out = Path(args.model_dir)
out.mkdir(parents=True, exist_ok=True)
with open(out / "model.pkl", "wb") as fh:
    pickle.dump(model, fh)
(out / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "features": FEATURES}, indent=1))

run.log("accuracy", accuracy)
run.log("test_rows", len(X_test))
