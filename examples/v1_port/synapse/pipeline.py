"""The seed "Synapse sample": the v1 article "How to use Apache Spark (powered by Azure Synapse
Analytics) in your machine learning pipeline" (``how-to-use-synapsesparkstep.md``), its code in
the article's order, ported. Data preparation on a Synapse Spark pool (``SynapseSparkStep``),
then a "training" step on a CPU cluster reading the Spark step's output.

Changed: each ``azureml`` import (the original kept as a ``# was:`` comment; the article's
step-2 snippet uses ``PythonScriptStep`` without importing it, so its import is the sample
notebook's), and the last statement, ``pipeline.submit(...)``, runs under
``if __name__ == "__main__":`` (``definitions.py`` imports this file to build the job it
submits). Left out: the article's two set-up sections, which link the Synapse workspace
(``LinkedService.get(ws, 'synapselink1')``) and attach its pool
(``SynapseCompute.attach_configuration`` / ``ComputeTarget.attach(ws, 'link1-spark01', ...)``):
there is nothing to link or attach here (those names say so when imported or called). The pool is the ``SparkPool`` resource
``link1_spark01`` in ``definitions.py`` (compat maps the v1 name ``'link1-spark01'`` to that
key), as ``cpucluster`` is the ``LocalProcessCluster`` the training step runs on.

Before the first run, put ``Titanic.csv`` on the workspace datastore (the article: "The above
code assumes that the file ``Titanic.csv`` is in blob storage"; the sample notebook uploads it):
``aml-assets datasets upload Titanic.csv``. Then run it from this folder as the article does,
``python pipeline.py`` (``pipeline.submit``, through ``workspace.yaml`` -> ``definitions.py``), or
``aml-assets run -f definitions.py -j pipeline``.
"""

from aml_assets.compat.core import Workspace  # was: from azureml.core import Workspace, LinkedService, SynapseWorkspaceLinkedServiceConfiguration
from aml_assets.compat.core.compute import ComputeTarget  # was: from azureml.core.compute import SynapseCompute, ComputeTarget

ws = Workspace.from_config()

# --- Create a SynapseSparkStep that uses the linked Apache Spark pool --------------------------
from aml_assets.compat.core import Dataset  # was: from azureml.core import Dataset

datastore = ws.get_default_datastore()
file_name = 'Titanic.csv'

titanic_tabular_dataset = Dataset.Tabular.from_delimited_files(path=[(datastore, file_name)])
step1_input1 = titanic_tabular_dataset.as_named_input("tabular_input")

# Example only: it wouldn't make sense to duplicate input data, especially one as tabular and the other as files
titanic_file_dataset = Dataset.File.from_files(path=[(datastore, file_name)])
step1_input2 = titanic_file_dataset.as_named_input("file_input").as_hdfs()

from aml_assets.compat.data import HDFSOutputDatasetConfig  # was: from azureml.data import HDFSOutputDatasetConfig
step1_output = HDFSOutputDatasetConfig(destination=(datastore,"test")).register_on_complete(name="registered_dataset")

from aml_assets.compat.core.environment import Environment  # was: from azureml.core.environment import Environment
from aml_assets.compat.pipeline.steps import SynapseSparkStep  # was: from azureml.pipeline.steps import SynapseSparkStep

env = Environment(name="myenv")
env.python.conda_dependencies.add_pip_package("azureml-core>=1.20.0")

step_1 = SynapseSparkStep(name = 'synapse-spark',
                          file = 'dataprep.py',
                          source_directory="./code",
                          inputs=[step1_input1, step1_input2],
                          outputs=[step1_output],
                          arguments = ["--tabular_input", step1_input1,
                                       "--file_input", step1_input2,
                                       "--output_dir", step1_output],
                          compute_target = 'link1-spark01',
                          driver_memory = "7g",
                          driver_cores = 4,
                          executor_memory = "7g",
                          executor_cores = 2,
                          num_executors = 1,
                          environment = env)

# --- Use the SynapseSparkStep in a pipeline -----------------------------------------------------
from aml_assets.compat.core.compute import AmlCompute  # was: from azureml.core.compute import AmlCompute

cpu_cluster_name = "cpucluster"

if cpu_cluster_name in ws.compute_targets:
    cpu_cluster = ComputeTarget(workspace=ws, name=cpu_cluster_name)
    print('Found existing cluster, use it.')
else:
    compute_config = AmlCompute.provisioning_configuration(vm_size='STANDARD_D2_V2', max_nodes=1)
    cpu_cluster = ComputeTarget.create(ws, cpu_cluster_name, compute_config)
    print('Allocating new CPU compute cluster')

cpu_cluster.wait_for_completion(show_output=True)

step2_input = step1_output.as_input("step2_input").as_download()

from aml_assets.compat.pipeline.steps import PythonScriptStep  # was: from azureml.pipeline.steps import PythonScriptStep (the sample notebook's; the article's snippet leaves it out)

step_2 = PythonScriptStep(script_name="train.py",
                          arguments=[step2_input],
                          inputs=[step2_input],
                          compute_target=cpu_cluster_name,
                          source_directory="./code",
                          allow_reuse=False)

from aml_assets.compat.pipeline.core import Pipeline  # was: from azureml.pipeline.core import Pipeline

pipeline = Pipeline(workspace=ws, steps=[step_1, step_2])

if __name__ == "__main__":  # the article submits when its cell runs; definitions.py imports this file
    pipeline_run = pipeline.submit('synapse-pipeline', regenerate_outputs=True)
