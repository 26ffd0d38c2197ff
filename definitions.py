"""The reference project: the Azure ML "Spark job on a Synapse Spark pool" sample on Dagster.

titanic (source dataset) -> dataprep (Spark, spark01) -> titanic_prepared (registered)
                         -> train (Python, cpucluster) -> titanic_model
"""

from pathlib import Path

from dagster import Definitions

from aml_assets import (
    ExpectedColumns,
    NotNull,
    OutputDataset,
    Pipeline,
    PipelineParameter,
    PythonScriptStep,
    RowCount,
    SynapseSparkStep,
    TabularDataset,
)
from aml_assets.pipeline.steps import Environment
from resources.compute import compute_targets
from resources.datastores import datastores

HERE = Path(__file__).resolve().parent
FEATURES = ["Pclass", "Sex", "Age", "SibSp", "Parch", "Fare", "Embarked"]


def build_pipeline(project_dir: Path = HERE) -> Pipeline:
    """The reference pipeline, with its scripts and seed data taken from ``project_dir``."""
    titanic = TabularDataset.from_delimited_files(
        name="titanic",
        path="titanic/titanic.csv",
        seed=project_dir / "data" / "titanic.csv",
        description="Titanic passenger list (891 passengers), uploaded to the datastore on first use.",
    )

    titanic_prepared = OutputDataset("titanic_prepared", format="parquet").register(
        description="Cleaned Titanic features: Age imputed, Embarked filled, Sex/Embarked encoded.",
        tags={"sample": "titanic"},
        checks=[
            ExpectedColumns(
                columns={
                    "PassengerId": "int",
                    "Survived": "int",
                    "Pclass": "int",
                    "Sex": "int",
                    "Age": "double",
                    "SibSp": "int",
                    "Parch": "int",
                    "Fare": "double",
                    "Embarked": "int",
                }
            ),
            NotNull(columns=FEATURES),
            RowCount(min=891, max=891),
        ],
    )

    titanic_model = OutputDataset(
        "titanic_model", format="files", description="Pickled RandomForest and its metrics."
    )

    n_estimators = PipelineParameter(
        "n_estimators", 200, description="Trees in the random forest.", min=1, max=5000
    )

    dataprep = SynapseSparkStep(
        name="dataprep",
        script="dataprep.py",
        source_directory=project_dir / "code",
        arguments=[
            "--tabular_input", titanic.as_named_input("tabular_input"),
            "--file_input", titanic.as_direct("file_input"),
            "--output_dir", titanic_prepared,
        ],
        compute_target="spark01",
        driver_memory="2g",
        driver_cores=1,
        executor_memory="2g",
        executor_cores=1,
        num_executors=1,
        description="Clean the Titanic data with Spark on the spark01 pool.",
    )

    train = PythonScriptStep(
        name="train",
        script="train.py",
        source_directory=project_dir / "code",
        arguments=[
            "--prepared", titanic_prepared.as_download("prepared"),
            "--model_dir", titanic_model,
            "--n_estimators", n_estimators,
        ],
        compute_target="cpucluster",
        # Its own environment (built by uv from its cache, content-addressed, shared by every
        # run): bump a pin and only train reruns, "environment changed: scikit-learn A -> B".
        environment=Environment(
            name="train", pip=("scikit-learn==1.9.1", "pandas==2.3.3", "pyarrow==26.0.1")
        ),
        description="Train a survival classifier on the cpucluster.",
    )

    pipeline = Pipeline(
        "synapse_pipeline",
        steps=[dataprep, train],
        description="Spark data preparation of the Titanic data, then training on a CPU cluster.",
    )
    return pipeline


def build_definitions(project_dir: Path = HERE, resources: dict | None = None) -> Definitions:
    """Definitions of the reference project; ``resources`` override the configured ones."""
    return build_pipeline(project_dir).to_definitions(
        resources={**compute_targets(), **datastores(), **(resources or {})}
    )


defs = build_definitions()
