# examples/my_pipeline/steps/prep.py: on the Spark pool; drops rows without an amount.
import argparse

from pyspark.sql import SparkSession

parser = argparse.ArgumentParser()
parser.add_argument("--in", dest="source", required=True)  # the CSV's path (as_direct)
parser.add_argument("--out", required=True)                # an empty folder to write into
args = parser.parse_args()

spark = SparkSession.builder.getOrCreate()                 # the pool's session
sales = spark.read.csv(args.source, header=True, inferSchema=True)
sales.dropna(subset=["amount"]).write.mode("overwrite").parquet(args.out)
