"""The objects of ``aml_assets.compat.core`` other than ``Run`` (imported when first used, so a
step script importing ``Run`` from there loads nothing else)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aml_assets.compat._support import BuildsOurs, no_counterpart, resource_name
from aml_assets.compat.core._environment import with_v1_sections
from aml_assets.compute import environments
from aml_assets.data.datasets import FileDataset, TabularDataset
from aml_assets.service import experiment

__all__ = [
    "Dataset",
    "Datastore",
    "Environment",
    "Experiment",
    "Workspace",
]


class Workspace:
    """The project standing in for v1's workspace: its ``workspace.yaml`` (the code locations
    runs are submitted to). There is no workspace service, subscription or sign-in."""

    def __init__(
        self,
        subscription_id: str | None = None,
        resource_group: str | None = None,
        workspace_name: str | None = None,
        auth: Any = None,
        *,
        workspace_file: str | Path = "workspace.yaml",
        **_: Any,
    ):
        if auth is not None:
            no_counterpart(
                "Workspace authentication (auth=)",
                "nothing to sign in to: runs use the local Dagster instance; Azure Blob "
                "datastores take their key or connection string from the environment "
                "(dagster.EnvVar) in the resources.",
            )
        self.name = workspace_name or "local"
        self.workspace_file = Path(workspace_file).expanduser().resolve()

    @classmethod
    def from_config(cls, path: str | Path | None = None, auth: Any = None, **_: Any) -> Workspace:
        """The project whose ``workspace.yaml`` is in ``path`` (a folder or the file; default:
        the current folder), as v1 reads ``config.json``."""
        where = Path(path or ".").expanduser()
        file = where if where.suffix in (".yaml", ".yml") else where / "workspace.yaml"
        return cls(auth=auth, workspace_file=file)

    @classmethod
    def get(cls, name: str, auth: Any = None, **_: Any) -> Workspace:
        """v1 looks the workspace up in Azure; here there is none to look up."""
        no_counterpart(
            f"Workspace.get('{name}')", "Workspace.from_config(path) with the project's folder."
        )

    @classmethod
    def create(cls, name: str, **_: Any) -> Workspace:
        """v1 creates an Azure resource; here there is none to create."""
        no_counterpart(
            f"Workspace.create('{name}')",
            "a project folder with workspace.yaml and definitions.py (see README).",
        )

    def get_default_datastore(self) -> Datastore:
        """The datastore pipelines publish to by default (resource key "workspace")."""
        return Datastore(self, "workspace")

    @property
    def compute_targets(self) -> _Named:
        """v1's ``ws.compute_targets[name]``: the compute target whose resource key is ``name``
        (any name: it is checked when the pipeline is validated against its resources)."""
        from aml_assets.compat.core.compute import AmlCompute

        return _Named(lambda name: AmlCompute(self, name))

    @property
    def datastores(self) -> _Named:
        """v1's ``ws.datastores[name]``: the datastore whose resource key is ``name``."""
        return _Named(lambda name: Datastore(self, name))


class _Named:
    """A v1 mapping of workspace objects by name; here every name is a resource key, checked
    when the pipeline is validated against its resources, so every name is "in" it."""

    def __init__(self, make: Any):
        self._make = make

    def __getitem__(self, name: str) -> Any:
        return self._make(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str)

    def get(self, name: str, default: Any = None) -> Any:
        return self._make(name)


class Datastore:
    """A datastore named by its resource key (configure the datastore itself as a resource:
    ``LocalDatastore`` or ``AzureBlobDatastore``)."""

    def __init__(self, workspace: Any = None, name: str = "workspace"):
        self.workspace, self.name = workspace, name

    def __repr__(self) -> str:
        return f"Datastore('{self.name}')"

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def get(workspace: Any, datastore_name: str) -> Datastore:
        """The datastore whose resource key is ``datastore_name``."""
        return Datastore(workspace, datastore_name)

    @staticmethod
    def get_default(workspace: Any) -> Datastore:
        """The datastore pipelines publish to by default (resource key "workspace")."""
        return Datastore(workspace, "workspace")

    @staticmethod
    def register_azure_blob_container(workspace: Any, datastore_name: str, *args: Any, **kw: Any) -> Datastore:
        """v1 registers the container in the workspace; here a datastore is a resource."""
        no_counterpart(
            "Datastore.register_azure_blob_container",
            f"add resources={{'{datastore_name}': AzureBlobDatastore(container=..., "
            "account_name=..., account_key=EnvVar(...))}} to your Definitions, then name it "
            f"Datastore.get(ws, '{datastore_name}').",
        )

    def path(self, path: str | None = None, data_reference_name: str | None = None) -> Any:
        """v1's ``datastore.path(path, data_reference_name)``: a ``DataReference`` to it."""
        from aml_assets.data.references import DataReference

        return DataReference(self.name, data_reference_name, path)

    def _store(self) -> Any:
        """The datastore v1's upload methods write to: a LocalDatastore of this name at the
        default root ($AML_DATASTORE_ROOT); any other store: upload with its resource."""
        from aml_assets.data.datastore import LocalDatastore

        return LocalDatastore(name=self.name)

    def upload_files(
        self, files: Any, relative_root: str | None = None, target_path: str | None = None,
        overwrite: bool = False, show_progress: bool = True,
    ) -> list[str]:
        """v1's ``upload_files(files, relative_root=None, target_path=None, overwrite=False)``:
        local files to ``target_path`` on the LocalDatastore of this name at the default root
        (for an Azure Blob datastore or another root, call ``upload_files`` of that resource)."""
        if relative_root:
            no_counterpart(
                "upload_files(relative_root=...)",
                "upload each folder with its own target_path (files keep only their names).",
            )
        return self._store().upload_files([Path(f) for f in files], target_path or ".", overwrite)

    def upload(
        self, src_dir: str | Path, target_path: str | None = None, overwrite: bool = False,
        show_progress: bool = True,
    ) -> list[str]:
        """v1's ``upload(src_dir, target_path=None, overwrite=False)``: a local folder's files,
        keeping their relative paths, below ``target_path`` (see ``upload_files``)."""
        src = Path(src_dir)
        if not src.is_dir():
            raise NotADirectoryError(f"Datastore '{self.name}': upload({str(src_dir)!r}) needs a folder.")
        written = []
        for f in sorted(p for p in src.rglob("*") if p.is_file()):
            parent = f.parent.relative_to(src).as_posix()
            where = "/".join(p for p in [(target_path or "").strip("/"), parent] if p and p != ".")
            written += self._store().upload_files([f], where or ".", overwrite)
        return written


_NOT_NAME = re.compile(r"[^A-Za-z0-9_]")


def _target(path: Any, what: str) -> tuple[str, str]:
    """(datastore key, relative path) of v1's ``path=``: ``(datastore, path)``, a one-item list
    of it, or a DataPath."""
    if isinstance(path, list):
        if len(path) != 1:
            no_counterpart(
                f"{what} over several paths",
                "one dataset per path (or a folder holding them all, with a glob-free path).",
            )
        path = path[0]
    if isinstance(path, tuple) and len(path) == 2:
        return resource_name(path[0], "datastore") or "workspace", str(path[1]).lstrip("/")
    if hasattr(path, "datastore") and hasattr(path, "path_on_datastore"):
        return str(path.datastore), str(path.path_on_datastore)
    raise TypeError(
        f"{what}: path {path!r} is not (datastore, 'path/on/datastore'); datasets live on a "
        "datastore here (a local file: upload it, or give seed=)"
    )


def _dataset_name(path: str, name: str | None) -> str:
    """A v1 dataset has no name until registered; its asset here is named after its path."""
    if name:
        return name
    stem = Path(path.rstrip("/")).name.split(".")[0] or "dataset"
    stem = _NOT_NAME.sub("_", stem)
    return f"ds_{stem}" if stem[0].isdigit() else stem


#: Set on a dataset whose name was made from its file name (v1 code gave it none).
PATH_NAMED = "_v1_named_from_path"


def _named_from_path(dataset: Any, name: str | None) -> Any:
    if not name:
        setattr(dataset, PATH_NAMED, True)
    return dataset


def name_path_named_datasets(datasets: Any) -> None:
    """Datasets v1 code left unnamed that got the same name from their file names (the
    Synapse sample's ``train-dataset/tabular/Titanic.csv`` and ``train-dataset/file/Titanic.csv``)
    are named after their whole path instead (``train_dataset_tabular_Titanic``), so each is
    its own asset. Datasets named in code keep their names (a clash then fails validation)."""
    groups: dict[str, dict[tuple[str, str], Any]] = {}
    for ds in datasets:
        if getattr(ds, PATH_NAMED, False):
            groups.setdefault(ds.name, {}).setdefault((ds.datastore, ds.path), ds)
    for same_name in groups.values():
        if len(same_name) < 2:
            continue
        for ds in same_name.values():
            whole = _NOT_NAME.sub("_", ds.path.rstrip("/").rsplit(".", 1)[0]).strip("_") or "dataset"
            ds.name = f"ds_{whole}" if whole[0].isdigit() else whole


class _Tabular:
    @staticmethod
    def from_delimited_files(
        path: Any,
        validate: bool = True,
        include_path: bool = False,
        infer_column_types: bool = True,
        set_column_types: Mapping[str, str] | None = None,
        separator: str = ",",
        header: Any = True,
        partition_format: str | None = None,
        support_multi_line: bool = False,
        empty_as_string: bool = False,
        encoding: str = "utf8",
        *,
        name: str | None = None,
        **ours: Any,
    ) -> TabularDataset:
        """v1's ``Dataset.Tabular.from_delimited_files``; the dataset (an asset) is named after
        its path unless ``name=`` says otherwise."""
        if include_path or partition_format:
            no_counterpart(
                "include_path / partition_format",
                "read the partition folders in the script (pyarrow.dataset / Spark basePath).",
            )
        store, rel = _target(path, "Dataset.Tabular.from_delimited_files")
        options = {"multiLine": "true"} if support_multi_line else {}
        return _named_from_path(TabularDataset.from_delimited_files(
            _dataset_name(rel, name), rel, datastore=store, separator=separator, header=bool(header),
            encoding="utf-8" if encoding.replace("-", "") == "utf8" else encoding,
            column_types=dict(set_column_types or {}), options=options, **ours,
        ), name)

    @staticmethod
    def from_parquet_files(path: Any, validate: bool = True, include_path: bool = False, *,
                           name: str | None = None, **ours: Any) -> TabularDataset:
        """v1's ``Dataset.Tabular.from_parquet_files``."""
        store, rel = _target(path, "Dataset.Tabular.from_parquet_files")
        return _named_from_path(
            TabularDataset.from_parquet_files(_dataset_name(rel, name), rel, datastore=store, **ours), name
        )


class _File:
    @staticmethod
    def from_files(path: Any, validate: bool = True, partition_format: str | None = None,
                   is_file: bool = False, *, name: str | None = None, **ours: Any) -> FileDataset:
        """v1's ``Dataset.File.from_files``."""
        store, rel = _target(path, "Dataset.File.from_files")
        return _named_from_path(FileDataset.from_files(_dataset_name(rel, name), rel, datastore=store, **ours), name)


class Dataset:
    """v1's ``Dataset.Tabular`` / ``Dataset.File`` factories, building our dataset declarations."""

    Tabular = _Tabular
    File = _File

    @staticmethod
    def get_by_id(workspace: Any, id: str) -> Any:  # noqa: A002 (v1's argument name)
        """In a step script: the input dataset whose id is ``id``. v1 gives a named input's
        argument its dataset id; here the argument is the input's path, so
        ``Dataset.get_by_id(run.experiment.workspace, id=args.x)`` is that input
        (``Run.input_datasets[name]``: ``to_pandas_dataframe()``, ``to_spark_dataframe()``).
        ``workspace`` is not used."""
        from amlrun import Run

        return Run.get_context().input_by_id(id)

    @staticmethod
    def get_by_name(workspace: Any, name: str, version: Any = "latest") -> Any:
        """A registered dataset's version (``DatasetRegistry``), read from the workspace store."""
        no_counterpart(
            "Dataset.get_by_name outside a pipeline",
            f"aml_assets.DatasetRegistry(LocalDatastore()).get('{name}', version) in a notebook; "
            "in a pipeline, read the producing step's OutputDataset as an input.",
        )


class Environment(metaclass=BuildsOurs):
    """v1's ``Environment(name)``; builds ``aml_assets.Environment`` (the running interpreter
    until it asks for packages), with v1's mutable sections:
    ``env.python.conda_dependencies.add_pip_package("scikit-learn")`` asks for a package (an
    isolated environment), ``env.environment_variables[k] = v`` sets a variable. v1 SDK packages
    (``azureml-*``) are not installed: amlrun provides what scripts use of them.
    ``from_pip_requirements`` gives an isolated, locked one."""

    _ours = environments.Environment

    def __new__(cls, name: str | None = None, **ours: Any) -> environments.Environment:
        return with_v1_sections(environments.Environment(name=name, **ours))

    @staticmethod
    def from_pip_requirements(name: str, file_path: str | Path, pip_version: str | None = None) -> environments.Environment:
        """An isolated environment from a requirements file (resolved and locked with uv)."""
        return with_v1_sections(environments.Environment(name=name, requirements_file=file_path))

    @staticmethod
    def from_conda_specification(name: str, file_path: str | Path) -> environments.Environment:
        """v1 builds a conda environment; there is no conda here."""
        no_counterpart(
            "Environment.from_conda_specification (conda)",
            "Environment.from_pip_requirements(name, 'requirements.txt') or "
            "aml_assets.Environment(pip=[...], python='3.11') with the conda file's pip packages.",
        )

    @staticmethod
    def from_docker_image(name: str, image: str, **_: Any) -> environments.Environment:
        """v1 runs the step in a Docker image; steps here run in an isolated Python environment."""
        no_counterpart(
            "Environment.from_docker_image / Docker environments",
            "aml_assets.Environment(pip=[...], python=...) (an isolated uv environment), or a "
            "KubernetesCluster(image=...) compute target (docs/scaling-out.md).",
        )

    @staticmethod
    def get(workspace: Any, name: str, version: str | None = None) -> environments.Environment:
        """v1 reads a registered environment; environments are declared in code here."""
        no_counterpart(
            f"Environment.get(ws, '{name}')",
            "declare the environment in code (aml_assets.Environment(...)) where the pipeline is defined.",
        )


class Experiment(experiment.Experiment):
    """v1's ``Experiment(workspace, name)``: runs grouped by name. ``workspace``: a
    ``Workspace`` (its ``workspace.yaml``), a path to one, or None (./workspace.yaml)."""

    def __init__(self, workspace: Any, name: str, **kw: Any):
        file = getattr(workspace, "workspace_file", None) or workspace or "workspace.yaml"
        super().__init__(name, workspace=file, **kw)

    def submit(self, config: Any, tags: Mapping[str, str] | None = None, **kw: Any) -> experiment.PipelineRun:
        """v1's ``submit(pipeline, tags=None, pipeline_parameters=..., regenerate_outputs=...)``."""
        kw.pop("continue_on_step_failure", None)  # a pipeline's setting here (Pipeline(...))
        return super().submit(config, tags=tags, **kw)
