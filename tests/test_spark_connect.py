"""Spark pools on a Spark Connect server: steps attach to it, no JVM starts in the step's process."""

from __future__ import annotations

import pytest

from aml_assets import DatasetRegistry, SparkPool
from tests.support.runs import log_messages, materializations, reference_defs, run_job, step_failure_messages
from tests.support.spark_connect import SparkConnectServer

pytestmark = [pytest.mark.spark, pytest.mark.slow]


@pytest.fixture(scope="module")
def connect_server():
    server = SparkConnectServer().start()
    yield server
    server.stop()


def test_reference_pipeline_on_spark_connect(project, instance, datastore, connect_server):
    pool = SparkPool(remote=connect_server.url)
    result = run_job(reference_defs(project, pool), instance)
    assert result.success, step_failure_messages(result)
    mats = materializations(result)
    assert mats["titanic_prepared"]["dagster/row_count"] == 891
    assert mats["titanic_model"]["accuracy"] >= 0.75
    messages = log_messages(instance, result.run_id)
    assert any(f"attached to Spark Connect server {connect_server.url}" in m for m in messages)
    assert not any("started a SparkSession" in m for m in messages)
    assert len(DatasetRegistry(datastore).get("titanic_prepared").to_pandas_dataframe()) == 891


def test_unreachable_connect_server_fails_the_step_clearly(project, instance, datastore):
    pool = SparkPool(remote="sc://127.0.0.1:9")  # nothing listens on the discard port
    result = run_job(reference_defs(project, pool), instance)
    assert not result.success
    [message] = step_failure_messages(result)
    assert "Spark pool cannot reach the Spark Connect server at sc://127.0.0.1:9" in message
    assert "Start it (sbin/start-connect-server.sh) or fix the pool's remote= URL" in message
    assert DatasetRegistry(datastore).versions("titanic_prepared") == []
