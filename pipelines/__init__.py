"""DALI pipeline definitions (installed as ``quadvault_dali.pipelines``); graphs only, no I/O."""

from .video_sampling import (ENCODED_INPUT, FRAMES_INPUT, ROI_INPUT, STREAM_INPUT, to_model_input,
                             video_sampling_pipeline, video_stream_pipeline)

__all__ = ["ENCODED_INPUT", "FRAMES_INPUT", "ROI_INPUT", "STREAM_INPUT", "to_model_input", "video_sampling_pipeline",
           "video_stream_pipeline"]
