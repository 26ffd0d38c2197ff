"""The ported Synapse sample's Dagster Definitions: its Spark pool, CPU cluster and datastore as
resources, under the names its v1 code gives them (``workspace.yaml`` points here). The v1
compute name ``link1-spark01`` is the resource key ``link1_spark01`` (a key is an identifier;
compat maps the dash)."""

from aml_assets import LocalDatastore, LocalProcessCluster, SparkPool
from pipeline import pipeline

RESOURCES = {
    "workspace": LocalDatastore(),
    "link1_spark01": SparkPool(master="local[2]", conf={"spark.sql.shuffle.partitions": "2"}),
    "cpucluster": LocalProcessCluster(max_concurrent_steps=2),
}

defs = pipeline.to_definitions(RESOURCES)
