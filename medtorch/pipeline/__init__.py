"""The main job: one study from scans to outputs and a run record, and cohorts on Dask."""

from medtorch.pipeline.config import StudyConfig, load_config, parse_config
from medtorch.pipeline.run import RunRecord, run_pipeline

__all__ = ["RunRecord", "StudyConfig", "load_config", "parse_config", "run_pipeline"]
