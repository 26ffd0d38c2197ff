"""The seed article "Create, run, & track ML pipelines" (Azure ML SDK v1, 2019), ported.

What changed, and nothing else:
  * the imports (``azureml...`` -> ``aml_assets.compat...``), as the migration guide says;
  * the data: our own small stand-in, ``data/posts.json`` (60 short posts on three topics),
    in place of 20newsgroups' ``20news.pkl``;
  * the compute target's name: ``aml_compute`` (a Dagster resource key is an identifier;
    v1's ``aml-compute`` is not);
  * the article leaves ``project_folder``, ``extractStep``, ``comp_data1/2`` and ``out_data3``
    undefined: they are defined here the way the article uses them, and compareStep's
    ``target=`` (a typo v1 itself refuses) is ``compute_target=``.

Run it from this folder, as the article's notebook runs from its own: ``python pipeline.py``
submits it (``workspace.yaml`` -> ``definitions.py`` holds its job), or
``dagster job execute -w workspace.yaml -j pipeline``.
"""

import aml_assets.compat  # was: import azureml.core
from aml_assets.compat.core import Workspace, Datastore  # was: from azureml.core import ...

ws = Workspace.from_config()

# --- Set up a datastore ---------------------------------------------------------------------
# Default datastore
def_data_store = ws.get_default_datastore()

# Get the blob storage associated with the workspace
def_blob_store = Datastore(ws, "workspaceblobstore")

# Get file storage associated with the workspace
def_file_store = Datastore(ws, "workspacefilestore")

def_blob_store.upload_files(
    ["./data/posts.json"],  # the article: ["./data/20news.pkl"]
    target_path="posts",  # the article: "20newsgroups"
    overwrite=True)

# --- Configure data reference ---------------------------------------------------------------
from aml_assets.compat.data.data_reference import DataReference  # was: azureml.data.data_reference

blob_input_data = DataReference(
    datastore=def_blob_store,
    data_reference_name="test_data",
    path_on_datastore="posts/posts.json")  # the article: "20newsgroups/20news.pkl"

from aml_assets.compat.pipeline.core import PipelineData  # was: from azureml.pipeline.core import PipelineData

output_data1 = PipelineData(
    "output_data1",
    datastore=def_blob_store,
    output_name="output_data1")

# --- Set up compute target ------------------------------------------------------------------
from aml_assets.compat.core.compute import ComputeTarget, AmlCompute  # was: azureml.core.compute

compute_name = "aml_compute"  # the article: "aml-compute"
vm_size = "STANDARD_NC6"
if compute_name in ws.compute_targets:
    compute_target = ws.compute_targets[compute_name]
    if compute_target and type(compute_target) is AmlCompute:
        print('Found compute target: ' + compute_name)
else:
    print('Creating a new compute target...')
    provisioning_config = AmlCompute.provisioning_configuration(vm_size=vm_size,  # STANDARD_NC6 is GPU-enabled
                                                                min_nodes=0,
                                                                max_nodes=4)
    # create the compute target
    compute_target = ComputeTarget.create(
        ws, compute_name, provisioning_config)

    # Can poll for a minimum number of nodes and for a specific timeout.
    # If no min node count is provided it will use the scale settings for the cluster
    compute_target.wait_for_completion(
        show_output=True, min_node_count=None, timeout_in_minutes=20)

# --- Construct your pipeline steps ----------------------------------------------------------
from aml_assets.compat.pipeline.steps import PythonScriptStep  # was: from azureml.pipeline.steps import PythonScriptStep
from aml_assets.compat.pipeline.core import PipelineParameter  # was: from azureml.pipeline.core.graph import PipelineParameter

project_folder = "scripts"

trainStep = PythonScriptStep(
    script_name="train.py",
    arguments=["--input", blob_input_data, "--output", output_data1],
    inputs=[blob_input_data],
    outputs=[output_data1],
    compute_target=compute_target,
    source_directory=project_folder
)

output_data2 = PipelineData("output_data2", datastore=def_blob_store, output_name="output_data2")

extractStep = PythonScriptStep(
    script_name="extract.py",
    arguments=["--input_data", blob_input_data, "--output_extract", output_data2],
    inputs=[blob_input_data],
    outputs=[output_data2],
    compute_target=compute_target,
    source_directory=project_folder
)

pipeline_param = PipelineParameter(
  name="pipeline_arg",
  default_value=10)

comp_data1, comp_data2 = output_data1, output_data2
out_data3 = PipelineData("out_data3", datastore=def_blob_store)

compareStep = PythonScriptStep(
  script_name="compare.py",
  arguments=["--comp_data1", comp_data1, "--comp_data2", comp_data2, "--output_data", out_data3, "--param1", pipeline_param],
  inputs=[ comp_data1, comp_data2],
  outputs=[out_data3],
  compute_target=compute_target,  # the article: target=compute_target
  source_directory=project_folder)

# list of steps to run
compareModels = [trainStep, extractStep, compareStep]

from aml_assets.compat.pipeline.core import Pipeline  # was: from azureml.pipeline.core import Pipeline

# Build the pipeline
pipeline1 = Pipeline(workspace=ws, steps=[compareModels])

if __name__ == "__main__":
    # --- Submit the pipeline ----------------------------------------------------------------
    from aml_assets.compat.core import Experiment  # was: from azureml.core import Experiment

    # Submit the pipeline to be run
    pipeline_run1 = Experiment(ws, 'Compare_Models_Exp').submit(pipeline1)
    pipeline_run1.wait_for_completion()
