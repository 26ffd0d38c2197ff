# examples/my_pipeline/steps/summarize.py: the top regions by amount, and two metrics.
import argparse
from pathlib import Path

import pandas as pd

from amlrun import Run

parser = argparse.ArgumentParser()
parser.add_argument("--in", dest="clean", required=True)  # a local copy of sales_clean
parser.add_argument("--out", required=True)               # an empty folder to write into
parser.add_argument("--top", type=int, default=3)
args = parser.parse_args()

sales = pd.read_parquet(args.clean)                       # a folder of Parquet files
by_region = sales.groupby("region")["amount"].sum().sort_values(ascending=False)
by_region.head(args.top).to_csv(Path(args.out) / "top_regions.csv")

run = Run.get_context()                                   # also works outside a pipeline
run.log("rows", len(sales))                               # shown on sales_report in Dagster
run.log("total_amount", float(sales["amount"].sum()))     # and in the run's summary
