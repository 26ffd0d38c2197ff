# examples/my_pipeline/definitions.py
from pathlib import Path

from aml_assets import (LocalDatastore, LocalProcessCluster, NotNull, OutputDataset, Pipeline,
                        PipelineParameter, PythonScriptStep, SparkPool, SynapseSparkStep,
                        TabularDataset)

src = Path(__file__).parent / "steps"
raw = TabularDataset.from_delimited_files("sales", "sales/2024.csv")   # on the datastore
clean = OutputDataset("sales_clean", format="parquet").register(checks=[NotNull(["amount"])])
report = OutputDataset("sales_report")
top_n = PipelineParameter("top_n", 3, min=1, max=1000)             # or choices=(3, 5, 10)

prep = SynapseSparkStep(name="prep", script="prep.py", source_directory=src,
                        arguments=["--in", raw.as_direct(), "--out", clean],
                        compute_target="spark01", executor_memory="1g")
summarize = PythonScriptStep(name="summarize", script="summarize.py", source_directory=src,
                             arguments=["--in", clean.as_download(), "--out", report,
                                        "--top", top_n],
                             compute_target="cpucluster")

defs = Pipeline("sales", steps=[prep, summarize]).to_definitions(resources={
    "workspace": LocalDatastore(),
    "spark01": SparkPool(master="local[2]"),
    "cpucluster": LocalProcessCluster(max_concurrent_steps=4),
})
