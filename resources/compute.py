"""Compute targets of the reference project (Azure: a Synapse Spark pool and a CPU cluster)."""

from aml_assets import LocalProcessCluster, SparkPool


def compute_targets() -> dict:
    """``spark01``: a local Spark pool; ``cpucluster``: local processes, two at a time."""
    return {
        "spark01": SparkPool(
            master="local[*]",
            driver_memory="2g",
            executor_memory="2g",
            # Few partitions suit a laptop-sized dataset; this sizes work, it changes no result.
            conf={"spark.sql.shuffle.partitions": "4"},
        ),
        "cpucluster": LocalProcessCluster(max_concurrent_steps=2),
    }
