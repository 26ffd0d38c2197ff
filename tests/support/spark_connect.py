"""A real Spark Connect server for tests, started from the pyspark package's own sbin scripts."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port nothing listens on now, on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SparkConnectServer:
    """``start-connect-server.sh`` on 127.0.0.1 with a temporary pid/log folder; stop() stops it."""

    def __init__(self, master: str = "local[2]"):
        import pyspark

        self.spark_home = Path(pyspark.__file__).resolve().parent
        self.master = master
        self.port = free_port()
        self.url = f"sc://127.0.0.1:{self.port}"
        self.workdir = Path(tempfile.mkdtemp(prefix="aml-spark-connect-"))
        self.env = {
            **os.environ,
            "SPARK_HOME": str(self.spark_home),
            "SPARK_PID_DIR": str(self.workdir),
            "SPARK_LOG_DIR": str(self.workdir),
            "PYSPARK_PYTHON": sys.executable,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def start(self, timeout: float = 90.0) -> SparkConnectServer:
        subprocess.run(
            [
                "bash", str(self.spark_home / "sbin" / "start-connect-server.sh"),
                "--master", self.master,
                "--conf", f"spark.connect.grpc.binding.port={self.port}",
                "--conf", "spark.connect.grpc.binding.address=127.0.0.1",
                "--conf", "spark.ui.enabled=false",
                "--conf", "spark.sql.shuffle.partitions=2",
            ],
            env=self.env, check=True, capture_output=True, timeout=60,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", self.port)) == 0:
                    return self
            time.sleep(0.25)
        logs = "\n".join(p.read_text(errors="replace")[-3000:] for p in self.workdir.glob("*.out"))
        self.stop()
        raise RuntimeError(f"Spark Connect server did not listen on {self.port} in {timeout:.0f} s:\n{logs}")

    def stop(self) -> None:
        subprocess.run(
            ["bash", str(self.spark_home / "sbin" / "stop-connect-server.sh")],
            env=self.env, capture_output=True, timeout=60,
        )
        shutil.rmtree(self.workdir, ignore_errors=True)
