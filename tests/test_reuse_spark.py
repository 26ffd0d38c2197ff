"""Spark settings in fingerprints, on real pipelines: result settings are hashed wherever they are
set (pool or step), speed-only ones are not, and each step runs with exactly its settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from aml_assets import LocalDatastore, OutputDataset, Pipeline, SparkPool, SynapseSparkStep
from tests.support.runs import materializations, reused, run_job

pytestmark = [pytest.mark.spark, pytest.mark.slow]

SCRIPT = """
import sys
from pathlib import Path
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
hour = spark.sql("SELECT date_format(timestamp'2020-01-01 00:00:00 UTC', 'HH') AS h").first()["h"]
try:
    cast = spark.sql("SELECT CAST('abc' AS INT) AS v").first()["v"]
    ansi = f"lenient:{cast}"
except Exception:
    ansi = "strict"
(Path(sys.argv[1]) / "result.txt").write_text(f"{hour} {ansi}\\n")
"""


def _pipeline(code: Path, strict_conf: dict[str, str], lenient_conf: dict[str, str]) -> Pipeline:
    (code / "probe.py").write_text(SCRIPT)
    strict = SynapseSparkStep(name="strict", script="probe.py", source_directory=code,
                              arguments=[OutputDataset("strict_out")], conf=strict_conf)
    lenient = SynapseSparkStep(name="lenient", script="probe.py", source_directory=code,
                               arguments=[OutputDataset("lenient_out")], conf=lenient_conf)
    return Pipeline("spark_settings", steps=[strict, lenient])


def _pool(base: SparkPool, **conf: str) -> SparkPool:
    return SparkPool(master=base.master, driver_memory=base.driver_memory,
                     executor_memory=conf.pop("executor_memory", base.executor_memory),
                     conf={**base.conf, **{k.replace("_", "."): v for k, v in conf.items()}})


def _run(code, pool, instance, strict=None, lenient=None):
    strict = {"spark.sql.ansi.enabled": "true"} if strict is None else strict
    lenient = {"spark.sql.ansi.enabled": "false"} if lenient is None else lenient
    defs = _pipeline(code, strict, lenient).to_definitions(
        {"workspace": LocalDatastore(), "spark01": pool}
    )
    result = run_job(defs, instance, job="spark_settings")
    assert result.success
    return result


def _results(datastore, result) -> dict[str, str]:
    out = {}
    for name in ("strict_out", "lenient_out"):
        path = result.output_for_node(name.removesuffix("_out"), name).path
        out[name] = (datastore.local_path(path) / "result.txt").read_text().strip()
    return out


def test_each_spark_step_runs_with_its_own_settings_and_pool_settings_are_hashed(
    tmp_path, spark_pool, instance, datastore
):
    code = tmp_path / "code"
    code.mkdir()
    utc = _pool(spark_pool, spark_sql_session_timeZone="UTC")
    first = _run(code, utc, instance)
    # Two Spark steps in one run, one session, different step settings: each got its own.
    assert _results(datastore, first) == {"strict_out": "00 strict", "lenient_out": "00 lenient:None"}

    # A speed-only pool setting (executor memory) changes nothing.
    bigger = _pool(spark_pool, spark_sql_session_timeZone="UTC", executor_memory="2g")
    assert reused(_run(code, bigger, instance)) == {"strict_out": True, "lenient_out": True}

    # A result setting on the pool reruns every step on it, and the steps really see it.
    tokyo = _pool(spark_pool, spark_sql_session_timeZone="Asia/Tokyo")
    second = _run(code, tokyo, instance)
    assert reused(second) == {"strict_out": False, "lenient_out": False}
    assert _results(datastore, second) == {"strict_out": "09 strict", "lenient_out": "09 lenient:None"}
    because = materializations(second)["strict_out"]["runs_because"]
    assert because == "Spark setting spark.sql.session.timeZone changed ('UTC' -> 'Asia/Tokyo')"

    # A speed-only step setting: reused; a result setting on one step: only that step reruns.
    speed = {"spark.sql.ansi.enabled": "true", "spark.executor.memory": "2g"}
    assert reused(_run(code, tokyo, instance, strict=speed)) == {"strict_out": True, "lenient_out": True}
    partitions = {"spark.sql.ansi.enabled": "false", "spark.sql.shuffle.partitions": "3"}
    third = _run(code, tokyo, instance, lenient=partitions)
    assert reused(third) == {"strict_out": True, "lenient_out": False}
    assert "Spark setting spark.sql.shuffle.partitions changed ('2' -> '3')" in materializations(third)[
        "lenient_out"
    ]["runs_because"]
    # And the shared session is left as the pool configured it.
    from pyspark.sql import SparkSession

    session = SparkSession.builder.getOrCreate()
    assert session.conf.get("spark.sql.shuffle.partitions") == "2"


def test_a_setting_that_cannot_change_on_a_running_session_fails_clearly(
    tmp_path, spark_pool, instance, datastore
):
    code = tmp_path / "code"
    code.mkdir()
    _run(code, spark_pool, instance)  # the session runs now
    defs = _pipeline(code, {"spark.serializer": "org.apache.spark.serializer.KryoSerializer"}, {}).to_definitions(
        {"workspace": LocalDatastore(), "spark01": spark_pool}
    )
    result = run_job(defs, instance, job="spark_settings")
    assert not result.success
    from tests.support.runs import step_failure_messages

    message = "\n".join(step_failure_messages(result))
    assert "spark.serializer" in message and "strict" in message
    assert "parallel=True" in message
