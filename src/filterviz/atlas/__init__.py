"""The atlas: every filter of a model as a browsable static site, with dataset examples; resumable,
and able to spread its renders over processes of this machine or a Ray cluster. The activation atlas
(Carter et al. 2019) of a layer goes into the same folder, made the same way."""

from .activation_build import ActivationAtlasSummary, build_activation_atlas
from .build import AtlasSummary, build_atlas, model_fingerprint
from .executors import LocalExecutor, ProcessExecutor, RayExecutor, RenderSettings, RenderTask, TaskResult
from .files import MANIFEST
from .selection import AtlasLayer, default_layers

__all__ = ["MANIFEST", "ActivationAtlasSummary", "AtlasLayer", "AtlasSummary", "LocalExecutor", "ProcessExecutor",
           "RayExecutor", "RenderSettings", "RenderTask", "TaskResult", "build_activation_atlas", "build_atlas",
           "default_layers", "model_fingerprint"]
