"""QuadVault DALI: find the highlights in a huge drone-footage library.

Errors, discovery and probing are re-exported here; the rest lives in its subpackage: ``sampling``, ``model``,
``dataset``, ``training``, ``scan`` (``scan.runner.scan_library``) and ``reel``.
"""

from importlib.metadata import PackageNotFoundError, version

from .discovery import find_videos
from .errors import (BackendUnavailableError, DatasetError, DecodeError, FileAccessError, LabelsError, ModelFormatError,
                     OutputError, QuadvaultError, UnsupportedCodecError, VideoOpenError)
from .probe import VideoInfo, probe_video

try:
    __version__ = version("quadvault-dali")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0.1.0+src"

__all__ = [
    "BackendUnavailableError", "DatasetError", "DecodeError", "FileAccessError", "LabelsError", "ModelFormatError", "OutputError",
    "QuadvaultError", "UnsupportedCodecError", "VideoInfo", "VideoOpenError", "find_videos", "probe_video",
    "__version__",
]
