"""Compute targets of the reference project (Azure: a Synapse Spark pool and a CPU cluster)."""

import os

from dagster import EnvVar

from aml_assets import CeleryCpuCluster, LocalProcessCluster, SparkPool


def compute_targets() -> dict:
    """``spark01``: a local Spark pool; ``cpucluster``: local processes, two at a time.

    On a cluster (``aml-assets up --cluster`` exports these), the same pipeline runs elsewhere:
    ``$AML_CELERY_BROKER`` set: ``cpucluster`` is two Celery worker slots behind that Redis;
    ``$AML_SPARK_MASTER`` set: ``spark01`` runs on that master (e.g. a standalone cluster's
    ``spark://127.0.0.1:7077``), with the same Synapse settings.
    """
    cpucluster = (
        CeleryCpuCluster(broker=EnvVar("AML_CELERY_BROKER"), max_nodes=2)
        if os.environ.get("AML_CELERY_BROKER")
        else LocalProcessCluster(max_concurrent_steps=2)
    )
    return {
        "spark01": SparkPool(
            master=os.environ.get("AML_SPARK_MASTER") or "local[*]",
            driver_memory="2g",
            executor_memory="2g",
            # Few partitions suit a laptop-sized dataset; this sizes work, it changes no result.
            conf={"spark.sql.shuffle.partitions": "4"},
        ),
        "cpucluster": cpucluster,
    }
