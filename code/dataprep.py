"""Titanic data preparation on a Spark pool (the Azure ML Synapse sample's dataprep step).

Reads the passenger list twice, as the sample does: as a tabular dataset through the run context,
and as a file path handed to Spark's CSV reader. Cleans it and writes Parquet.

Run it on its own (offline) with:
    python code/dataprep.py --tabular_input data/titanic.csv --file_input data/titanic.csv --output_dir /tmp/out
"""

import argparse

from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from amlrun import Run

parser = argparse.ArgumentParser()
parser.add_argument("--tabular_input", required=True)
parser.add_argument("--file_input", required=True)
parser.add_argument("--output_dir", required=True)
args = parser.parse_args()

spark = SparkSession.builder.getOrCreate()
run = Run.get_context()

# Tabular input: through the run context when the pipeline runs us, else straight from the path.
if "tabular_input" in run.input_datasets:
    tabular = run.input_datasets["tabular_input"].to_spark_dataframe(spark)
else:
    tabular = spark.read.option("header", "true").option("inferSchema", "true").csv(args.tabular_input)
print(f"tabular input: {tabular.count()} rows, columns {tabular.columns}")

# File input: a path Spark reads directly.
raw = spark.read.option("header", "true").option("inferSchema", "true").csv(args.file_input)
if raw.count() != tabular.count():
    raise SystemExit("tabular and file inputs disagree on the row count")

df = raw.drop("Name", "Ticket", "Cabin")

# Impute Age with the median age of passengers of the same class and sex (overall median as fallback).
overall_median = df.approxQuantile("Age", [0.5], 0.0)[0]
medians = df.groupBy("Pclass", "Sex").agg(F.percentile_approx("Age", 0.5, 10000).alias("AgeMedian"))
df = (
    df.join(medians, on=["Pclass", "Sex"], how="left")
    .withColumn("Age", F.coalesce(F.col("Age"), F.col("AgeMedian"), F.lit(overall_median)))
    .drop("AgeMedian")
)

# Embarked: fill the two missing ports with the most common one, then encode.
top_port = df.groupBy("Embarked").count().dropna().orderBy(F.desc("count")).first()["Embarked"]
df = df.fillna({"Embarked": top_port})
fare_median = df.approxQuantile("Fare", [0.5], 0.0)[0]
df = df.fillna({"Fare": fare_median})

df = (
    df.withColumn("Sex", F.when(F.col("Sex") == "male", 1).otherwise(0))
    .withColumn("Embarked", F.when(F.col("Embarked") == "C", 1).when(F.col("Embarked") == "Q", 2).otherwise(0))
    .select(
        F.col("PassengerId").cast("int"),
        F.col("Survived").cast("int"),
        F.col("Pclass").cast("int"),
        F.col("Sex").cast("int"),
        F.col("Age").cast("double"),
        F.col("SibSp").cast("int"),
        F.col("Parch").cast("int"),
        F.col("Fare").cast("double"),
        F.col("Embarked").cast("int"),
    )
    .orderBy("PassengerId")
)

df.coalesce(1).write.mode("overwrite").parquet(args.output_dir)
print(f"wrote {df.count()} prepared rows to {args.output_dir}")
run.log("prepared_rows", df.count())
