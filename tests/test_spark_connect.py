"""Spark pools on a Spark Connect server: steps attach to it, no JVM starts in the step's process.

The end-to-end run happens in a fresh process: PySpark cannot hold a Connect session beside the
local session the other tests share, and a real project uses one kind of pool per process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aml_assets import DatasetRegistry, SparkPool
from tests.support.runs import reference_defs, run_job, step_failure_messages
from tests.support.spark_connect import SparkConnectServer

pytestmark = [pytest.mark.spark, pytest.mark.slow]

REPO = Path(__file__).resolve().parent.parent

RUNNER = """
import json, os, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from dagster import DagsterInstance
from aml_assets import SparkPool
from tests.support.runs import log_messages, materializations, reference_defs, run_job
instance = DagsterInstance.ephemeral()
result = run_job(reference_defs(Path({project!r}), SparkPool(remote={url!r})), instance)
mats = materializations(result)
print("RESULT " + json.dumps({{
    "success": result.success,
    "rows": mats.get("titanic_prepared", {{}}).get("dagster/row_count"),
    "accuracy": mats.get("titanic_model", {{}}).get("accuracy"),
    "messages": [m for m in log_messages(instance, result.run_id) if "Spark" in m],
    "connect_env_leaked": "SPARK_CONNECT_MODE_ENABLED" in os.environ,
}}))
"""


@pytest.fixture(scope="module")
def connect_server():
    server = SparkConnectServer().start()
    yield server
    server.stop()


def test_reference_pipeline_on_spark_connect(project, datastore, connect_server, tmp_path):
    script = tmp_path / "connect_run.py"
    script.write_text(RUNNER.format(repo=str(REPO), project=str(project), url=connect_server.url))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, out.stderr[-3000:]
    result = json.loads(lines[0].removeprefix("RESULT "))
    assert result["success"], out.stderr[-3000:]
    assert result["rows"] == 891 and result["accuracy"] >= 0.75
    assert any(f"attached to Spark Connect server {connect_server.url}" in m for m in result["messages"])
    assert not any("started a SparkSession" in m for m in result["messages"])
    assert result["connect_env_leaked"] is False, "Connect mode must not leak into later processes"
    assert len(DatasetRegistry(datastore).get("titanic_prepared").to_pandas_dataframe()) == 891


def test_unreachable_connect_server_fails_the_step_clearly(project, instance, datastore):
    pool = SparkPool(remote="sc://127.0.0.1:9")  # nothing listens on the discard port
    result = run_job(reference_defs(project, pool), instance)
    assert not result.success
    [message] = step_failure_messages(result)
    assert "Spark pool cannot reach the Spark Connect server at sc://127.0.0.1:9" in message
    assert "Start it (sbin/start-connect-server.sh) or fix the pool's remote= URL" in message
    assert DatasetRegistry(datastore).versions("titanic_prepared") == []


def test_connect_pool_beside_a_local_session_is_refused_clearly(spark_pool, connect_server):
    import logging

    from aml_assets import ComputeTargetError

    log = logging.getLogger("test")
    spark_pool.model_copy().session(log)  # a local session now runs in this process
    with pytest.raises(ComputeTargetError, match="a local SparkSession already runs in this process"):
        SparkPool(remote=connect_server.url).session(log)
