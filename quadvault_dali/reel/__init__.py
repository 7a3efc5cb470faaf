"""Highlight reels: the best window of each top video, scaled, crossfaded and encoded to H.264.

``make_reel(scores, "best.mp4", ReelOptions(...))`` does it all; ``plan_reel_for`` plans without
encoding (``--dry-run``).
"""

from .build import PreparedReel, ReelOptions, ReelResult, make_reel, plan_reel_for, prepare_reel
from .encoders import choose_encoder
from .frames import Letterbox, WindowReader, letterbox
from .render import RenderResult, render_reel
from .scores import ScoreSource, VideoScores, load_scores
from .select import EmptySelectionError, PlannedClip, ReelPlan, Window, best_windows, plan_reel
from .sidecar import format_plan, read_sidecar, sidecar_path, write_sidecar

__all__ = [
    "EmptySelectionError", "Letterbox", "PlannedClip", "PreparedReel", "ReelOptions", "ReelPlan", "ReelResult",
    "RenderResult", "ScoreSource", "VideoScores", "Window", "WindowReader", "best_windows", "choose_encoder",
    "format_plan", "letterbox", "load_scores", "make_reel", "plan_reel", "plan_reel_for", "prepare_reel",
    "read_sidecar", "render_reel", "sidecar_path", "write_sidecar",
]
