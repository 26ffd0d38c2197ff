"""Spark pools: which settings are fingerprinted, each step's settings on a shared session, and
a local pool that listens on loopback only.

In-process tests share the process's one SparkSession (the ``spark_pool`` fixture's) and leave
its configuration as they found it. Tests that need a session started with other settings run
in a subprocess: a JVM holds one SparkContext, and its network settings apply when it starts.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from aml_assets import SparkPool
from aml_assets.compute.spark import (
    SPARK_SIZING_KEYS,
    SPEED_ONLY_SPARK_KEYS,
    SPEED_ONLY_SPARK_PREFIXES,
    is_speed_only,
)
from aml_assets.errors import ComputeTargetError

REPO = Path(__file__).resolve().parent.parent
LOG = logging.getLogger("test_spark_pool")

ANSI_PROBE = "SELECT CAST('abc' AS INT) AS x"
HOUR_PROBE = "SELECT date_format(timestamp'2020-01-01 00:00:00 UTC', 'HH') AS h"
KRYO = "org.apache.spark.serializer.KryoSerializer"


# -- which settings are fingerprinted ------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        "spark.driver.memory",
        "spark.driver.cores",
        "spark.executor.memory",
        "spark.executor.cores",
        "spark.executor.instances",
        "spark.executor.memoryOverhead",
        "spark.dynamicAllocation.enabled",
        "spark.dynamicAllocation.maxExecutors",
        "spark.ui.enabled",
        "spark.ui.port",
        "spark.ui.killEnabled",
        "spark.app.name",
        "spark.master",
        "spark.eventLog.enabled",
        "spark.eventLog.dir",
        "spark.driver.host",
        "spark.driver.bindAddress",
        "spark.driver.port",
        "spark.blockManager.port",
        "spark.local.dir",
        "spark.ui.showConsoleProgress",
    ],
)
def test_speed_only_settings(key):
    assert is_speed_only(key)


@pytest.mark.parametrize(
    "key",
    [
        "spark.sql.session.timeZone",
        "spark.sql.ansi.enabled",
        "spark.sql.shuffle.partitions",
        "spark.sql.legacy.timeParserPolicy",
        "spark.sql.adaptive.enabled",
        "spark.serializer",
        "spark.sql.extensions",
        "spark.driver.extraJavaOptions",  # -Duser.timezone=... changes results
        "spark.executor.extraJavaOptions",
        "spark.hadoop.fs.azure.account.key",
        "my.own.setting",
        "spark.uiX",  # a prefix is a prefix of dotted names, not of any string
        "spark.driver.memoryFraction.madeUp",
    ],
)
def test_result_settings_are_hashed(key):
    assert not is_speed_only(key)


def test_speed_only_list_is_explicit_and_dotted():
    assert all(key.startswith("spark.") for key in SPEED_ONLY_SPARK_KEYS)
    assert all(prefix.endswith(".") for prefix in SPEED_ONLY_SPARK_PREFIXES)
    assert SPARK_SIZING_KEYS <= SPEED_ONLY_SPARK_KEYS  # the former name still works


def test_result_conf_keeps_result_settings_and_drops_speed_only_ones():
    pool = SparkPool(
        master="local[2]",
        driver_memory="2g",
        ui_enabled=True,
        bind_address="0.0.0.0",
        conf={
            "spark.sql.session.timeZone": "Asia/Tokyo",
            "spark.sql.ansi.enabled": "false",
            "spark.sql.shuffle.partitions": "8",
            "spark.executor.memoryOverhead": "1g",
            "spark.dynamicAllocation.enabled": "true",
            "spark.ui.port": "4999",
            "spark.local.dir": "/scratch",
        },
    )
    assert pool.result_conf() == {
        "spark.sql.session.timeZone": "Asia/Tokyo",
        "spark.sql.ansi.enabled": "false",
        "spark.sql.shuffle.partitions": "8",
    }
    # Sizing, UI and network fields never change a result: another value, same result conf.
    assert SparkPool(conf=pool.conf).result_conf() == pool.result_conf()


def test_result_conf_differs_when_a_result_setting_differs():
    utc = SparkPool(conf={"spark.sql.session.timeZone": "UTC"})
    tokyo = SparkPool(conf={"spark.sql.session.timeZone": "Asia/Tokyo"})
    assert utc.result_conf() != tokyo.result_conf()
    assert SparkPool().result_conf() == {}


# -- network settings ----------------------------------------------------------------------------


def test_local_pool_listens_on_loopback_by_default():
    conf = SparkPool(master="local[2]").spark_conf()
    assert conf["spark.driver.bindAddress"] == "127.0.0.1"
    assert conf["spark.driver.host"] == "127.0.0.1"
    assert conf["spark.ui.enabled"] == "false"
    assert SparkPool(master="local[2]").effective_bind_address() == "127.0.0.1"


def test_exposing_a_local_pool_is_explicit():
    pool = SparkPool(master="local[2]", bind_address="0.0.0.0", ui_enabled=True)
    conf = pool.spark_conf()
    assert conf["spark.driver.bindAddress"] == "0.0.0.0"
    assert "spark.driver.host" not in conf  # advertise the host's name, not the wildcard
    assert conf["spark.ui.enabled"] == "true"


def test_cluster_and_connect_pools_keep_sparks_network_defaults():
    cluster = SparkPool(master="spark://head:7077").spark_conf()
    assert "spark.driver.bindAddress" not in cluster and "spark.driver.host" not in cluster
    assert SparkPool(remote="sc://127.0.0.1:15002").effective_bind_address() is None
    pinned = SparkPool(master="spark://head:7077", bind_address="10.0.0.5").spark_conf()
    assert pinned["spark.driver.bindAddress"] == "10.0.0.5" == pinned["spark.driver.host"]


def test_pool_conf_overrides_network_fields():
    conf = SparkPool(
        conf={"spark.driver.host": "gateway.local", "spark.ui.enabled": "true"}
    ).spark_conf()
    assert conf["spark.driver.host"] == "gateway.local" and conf["spark.ui.enabled"] == "true"


def test_bind_address_must_be_an_address():
    with pytest.raises(ValueError, match="is not an address"):
        SparkPool(bind_address=" ")


# -- each step's settings on the shared session ---------------------------------------------------


@pytest.fixture
def spark(spark_pool):
    """The process's shared session, started with the shared pool's settings; the test must
    leave its configuration as it found it."""
    session = spark_pool.session(LOG)
    before = dict(session.conf.getAll)
    yield session
    assert dict(session.conf.getAll) == before, "a step's settings leaked into the session"


def _ansi_probe(session) -> str | None:
    """'error' if casting 'abc' to INT fails (ANSI mode), else the value (None)."""
    try:
        return session.sql(ANSI_PROBE).collect()[0][0]
    except Exception as exc:
        assert "CAST_INVALID_INPUT" in str(exc), exc
        return "error"


def _hour(session) -> str:
    return session.sql(HOUR_PROBE).collect()[0][0]


@pytest.mark.spark
def test_consecutive_steps_each_see_their_own_ansi_setting(spark_pool, spark):
    snapshot = dict(spark.conf.getAll)
    with spark_pool.step_session(LOG, {"spark.sql.ansi.enabled": "true"}, "strict") as session:
        assert session.conf.get("spark.sql.ansi.enabled") == "true"
        assert _ansi_probe(session) == "error"
    assert dict(spark.conf.getAll) == snapshot
    with spark_pool.step_session(LOG, {"spark.sql.ansi.enabled": "false"}, "lenient") as session:
        assert session.conf.get("spark.sql.ansi.enabled") == "false"
        assert _ansi_probe(session) is None
    assert dict(spark.conf.getAll) == snapshot
    with spark_pool.step_session(LOG, {}, "default") as session:  # Spark 4: ANSI on by default
        assert _ansi_probe(session) == "error"
    assert dict(spark.conf.getAll) == snapshot


@pytest.mark.spark
def test_consecutive_steps_each_see_their_own_time_zone(spark_pool, spark):
    hours = []
    for zone in ("UTC", "Asia/Tokyo", "America/New_York"):
        conf = {"spark.sql.session.timeZone": zone, "spark.driver.memory": "1g"}
        with spark_pool.step_session(LOG, conf, f"in_{zone}") as session:
            hours.append(_hour(session))
    assert hours == ["00", "09", "19"]


@pytest.mark.spark
def test_session_is_restored_after_a_failing_step(spark_pool, spark):
    snapshot = dict(spark.conf.getAll)
    with pytest.raises(RuntimeError, match="script failed"):
        with spark_pool.step_session(
            LOG,
            {"spark.sql.session.timeZone": "Asia/Tokyo", "spark.sql.ansi.enabled": "false"},
            "boom",
        ) as session:
            assert _hour(session) == "09"
            raise RuntimeError("script failed")
    assert dict(spark.conf.getAll) == snapshot
    with spark_pool.step_session(LOG, {}, "next") as session:
        assert _hour(session) == _hour(spark) and _ansi_probe(session) == "error"


@pytest.mark.spark
def test_settings_a_script_changes_do_not_leak_into_the_next_step(spark_pool, spark):
    snapshot = dict(spark.conf.getAll)
    with spark_pool.step_session(LOG, {}, "meddler") as session:
        session.conf.set("spark.sql.session.timeZone", "Asia/Tokyo")
        session.conf.set("spark.sql.shuffle.partitions", "7")
        session.conf.set("aml.test.custom", "x")
    assert dict(spark.conf.getAll) == snapshot


@pytest.mark.spark
def test_a_scripts_own_settings_are_set_per_step(spark_pool, spark):
    # Outside Spark's namespace: a session variable the script reads, settable at any time.
    for mode in ("a", "b"):
        with spark_pool.step_session(LOG, {"aml.test.mode": mode}, f"mode_{mode}") as session:
            assert session.conf.get("aml.test.mode") == mode
    assert spark.conf.get("aml.test.mode", None) is None


@pytest.mark.spark
def test_pool_conf_applies_to_its_steps_on_a_session_another_pool_started(spark_pool, spark):
    assert spark.conf.get("spark.sql.shuffle.partitions") == "2"  # the shared pool's setting
    tokyo = SparkPool(master="local[2]", conf={"spark.sql.session.timeZone": "Asia/Tokyo"})
    with tokyo.step_session(LOG, {}, "on_tokyo_pool") as session:
        assert _hour(session) == "09"
        # Started for the other pool, not asked for by this one: Spark's default while it runs.
        assert session.conf.get("spark.sql.shuffle.partitions") == "200"
    with tokyo.step_session(LOG, {"spark.sql.session.timeZone": "UTC"}, "step_wins") as session:
        assert _hour(session) == "00"


@pytest.mark.spark
@pytest.mark.parametrize(
    ("key", "value"),
    [("spark.serializer", KRYO), ("spark.sql.extensions", "com.example.NoSuchExtensions")],
)
def test_static_setting_on_a_running_session_fails_before_the_step_runs(
    spark_pool, spark, key, value
):
    ran = []
    with pytest.raises(ComputeTargetError) as caught:
        with spark_pool.step_session(
            LOG, {key: value, "spark.sql.session.timeZone": "Asia/Tokyo"}, "needs_static"
        ):
            ran.append(True)
    assert not ran
    message = str(caught.value)
    assert "Spark step 'needs_static'" in message
    assert f"{key}={value} is wanted, but the running session has {key}=(not set)" in message
    assert "set them on the Spark pool's conf" in message
    assert "parallel=True" in message
    assert "spark.sql.session.timeZone" not in message  # modifiable: not a problem


@pytest.mark.spark
def test_speed_only_difference_on_a_running_session_only_warns(spark_pool, spark, caplog):
    with caplog.at_level(logging.WARNING, logger=LOG.name):
        with spark_pool.step_session(LOG, {"spark.driver.memory": "3g"}, "bigger") as session:
            assert session.range(3).count() == 3
    assert any(
        "spark.driver.memory=3g was requested" in r.getMessage() and "'bigger'" in r.getMessage()
        for r in caplog.records
    )


# -- sessions started for a step, and network exposure (fresh processes) --------------------------


def _run_python(code: str, timeout: float = 240) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    assert out.returncode == 0 and lines, out.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


FIRST_STEP_STARTS = """
import json, logging
from aml_assets import SparkPool
from aml_assets.errors import ComputeTargetError
log = logging.getLogger("child")
pool = SparkPool(master="local[1]", driver_memory="512m", conf={"spark.sql.shuffle.partitions": "2"})
hour = "SELECT date_format(timestamp'2020-01-01 00:00:00 UTC', 'HH')"
result = {}
first = {"spark.serializer": "__KRYO__", "spark.sql.session.timeZone": "Asia/Tokyo",
         "spark.driver.memory": "600m"}
with pool.step_session(log, first, "first") as spark:
    result["first"] = [spark.conf.get("spark.serializer"), spark.sql(hour).collect()[0][0],
                       spark.sparkContext.getConf().get("spark.driver.memory")]
result["after_first"] = spark.conf.get("spark.sql.session.timeZone", None)
with pool.step_session(log, first, "same_again") as spark:
    result["same_again"] = spark.sql(hour).collect()[0][0]
try:
    with pool.step_session(log, {}, "second"):
        result["second_ran"] = True
except ComputeTargetError as exc:
    result["second_error"] = str(exc)
print("RESULT " + json.dumps(result))
""".replace("__KRYO__", KRYO)


@pytest.mark.spark
@pytest.mark.slow
def test_first_step_starts_the_session_with_its_settings_and_they_do_not_leak():
    result = _run_python(FIRST_STEP_STARTS)
    assert result["first"] == [KRYO, "09", "600m"]
    assert result["after_first"] is None  # modifiable: back to the pool's (unset)
    assert result["same_again"] == "09"
    assert "second_ran" not in result
    message = result["second_error"]
    assert "Spark step 'second'" in message
    assert (
        f"spark.serializer is not set for this step, but the running session was started with spark.serializer={KRYO}"
        in message
    )
    assert "parallel=True" in message


LISTENER = """
import json, logging, sys
from aml_assets import SparkPool
pool = SparkPool(master="local[1]", driver_memory="512m", ui_enabled=True, **__KWARGS__)
with pool.step_session(logging.getLogger("child"), {}, "probe") as spark:
    spark.range(10).count()
    spark.sparkContext.parallelize(range(4), 2).map(lambda x: x + 1).sum()  # Python workers too
    print("READY " + json.dumps({"ui": spark.sparkContext.uiWebUrl}), flush=True)
    sys.stdin.readline()
"""


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def _socket_inodes(pids: set[int]) -> set[str]:
    inodes = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def _address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_address)
    # /proc/net/tcp* print each 32-bit word in host (little-endian) order.
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw)
    v6 = ipaddress.IPv6Address(raw)
    return v6.ipv4_mapped or v6


def listening_sockets(root: int) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state held by ``root`` or its descendants."""
    inodes = _socket_inodes(_descendants(root))
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: LISTEN
                host, port = local.split(":")
                found.append((str(_address(host)), int(port, 16)))
    return sorted(found)


def _start_listener(kwargs: dict) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", LISTENER.replace("__KWARGS__", repr(kwargs))],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )


def _listeners_when_ready(proc: subprocess.Popen) -> tuple[dict, list[tuple[str, int]]]:
    for line in proc.stdout:
        if line.startswith("READY "):
            return json.loads(line.removeprefix("READY ")), listening_sockets(proc.pid)
    proc.wait(timeout=30)
    raise AssertionError(f"the Spark child process failed:\n{proc.stderr.read()[-4000:]}")


def _finish(proc: subprocess.Popen) -> None:
    try:
        proc.communicate("\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.spark
@pytest.mark.slow
def test_local_pool_listens_on_loopback_only_unless_told_otherwise():
    loopback = _start_listener({})
    exposed = _start_listener({"bind_address": "0.0.0.0"})
    try:
        info, sockets = _listeners_when_ready(loopback)
        exposed_info, exposed_sockets = _listeners_when_ready(exposed)
    finally:
        _finish(loopback)
        _finish(exposed)

    # Driver RPC, block manager, web UI, Py4J gateway (and Python workers): all on loopback.
    assert len(sockets) >= 3, sockets
    assert all(ipaddress.ip_address(host).is_loopback for host, _ in sockets), sockets
    assert info["ui"].startswith("http://127.0.0.1:")
    ui_port = int(info["ui"].rsplit(":", 1)[1])
    assert ui_port in {port for _, port in sockets}

    # An explicit bind_address is honoured: the driver and the UI listen on every interface.
    wildcard = {port for host, port in exposed_sockets if ipaddress.ip_address(host).is_unspecified}
    assert int(exposed_info["ui"].rsplit(":", 1)[1]) in wildcard, exposed_sockets
    assert len(wildcard) >= 2, exposed_sockets


# -- Spark Connect: the same rules through the Connect client --------------------------------------


CONNECT_STEPS = """
import json, logging
from pyspark.sql import SparkSession
from aml_assets import SparkPool
from aml_assets.errors import ComputeTargetError
log = logging.getLogger("child")
pool = SparkPool(remote="__URL__", conf={"spark.sql.session.timeZone": "Asia/Tokyo"})
hour = "SELECT date_format(timestamp'2020-01-01 00:00:00 UTC', 'HH')"
def ansi(spark):
    try:
        return spark.sql("SELECT CAST('abc' AS INT)").collect()[0][0]
    except Exception as exc:
        return "error" if "CAST_INVALID_INPUT" in str(exc) else repr(exc)
result = {"restored": []}
snapshot = dict(pool.session(log).conf.getAll)
with pool.step_session(log, {"spark.sql.ansi.enabled": "false"}, "lenient") as spark:
    with pool.script_environment():
        mine = SparkSession.builder.getOrCreate()  # what a step's script does
    result["lenient"] = [ansi(mine), mine.sql(hour).collect()[0][0], mine is spark]
result["restored"].append(dict(spark.conf.getAll) == snapshot)
with pool.step_session(log, {"spark.sql.session.timeZone": "UTC"}, "utc") as spark:
    result["utc"] = [ansi(spark), spark.sql(hour).collect()[0][0]]
    spark.conf.set("spark.sql.shuffle.partitions", "3")  # the script's own change
result["restored"].append(dict(spark.conf.getAll) == snapshot)
try:
    with pool.step_session(log, {"spark.sql.extensions": "com.example.X"}, "static"):
        result["static_ran"] = True
except ComputeTargetError as exc:
    result["static_error"] = str(exc)
result["restored"].append(dict(spark.conf.getAll) == snapshot)
print("RESULT " + json.dumps(result))
"""


@pytest.fixture(scope="module")
def connect_server():
    from tests.support.spark_connect import SparkConnectServer

    server = SparkConnectServer().start()
    yield server
    server.stop()


@pytest.mark.spark
@pytest.mark.slow
def test_step_settings_on_a_spark_connect_session(connect_server):
    # A fresh process: PySpark cannot hold a Connect session beside this process's local one.
    result = _run_python(CONNECT_STEPS.replace("__URL__", connect_server.url))
    assert result["lenient"] == [None, "09", True]  # step's ANSI off, pool's time zone
    assert result["utc"] == ["error", "00"]  # ANSI back to the server's default; step's zone
    assert "static_ran" not in result
    assert "Spark step 'static'" in result["static_error"]
    assert "spark.sql.extensions=com.example.X is wanted" in result["static_error"]
    assert result["restored"] == [True, True, True]
