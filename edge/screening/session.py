"""Track the subject across frames and collect N good crops for one screening decision.

The daemon calls ``SessionTracker.step`` once per processed frame. A session starts
when a subject appears, follows that subject (box overlap or small centre jump), counts
frames that fail quality gates with their reasons, and asks for inference once it has
``good_frames`` good crops within ``window_s`` seconds. After a decision it waits for the
face to leave, so each person gets one result. A session whose window runs out, or whose
face leaves first, ends as ``retake``.
"""

from __future__ import annotations

import uuid
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from facediag.edge.face.types import Face
from facediag.edge.screening.decision import RETAKE, Decision
from facediag.edge.screening.record import QualitySummary


@dataclass(frozen=True)
class SessionConfig:
    good_frames: int = 8
    window_s: float = 10.0
    face_lost_s: float = 1.5
    min_confidence: float = 0.5
    same_subject_iou: float = 0.2


@dataclass
class Session:
    id: str
    started_at: float
    last_seen: float
    box: tuple[float, float, float, float]
    crops: list[np.ndarray] = field(default_factory=list)
    first_good_at: float | None = None
    rejected: Counter[str] = field(default_factory=Counter)
    frames: int = 0
    good: int = 0
    decision: Decision | None = None
    decided_at: float | None = None

    def quality_summary(self) -> QualitySummary:
        return QualitySummary(
            frames_seen=self.frames,
            good_frames=self.good,
            rejected_frames=int(sum(self.rejected.values())),
            rejections=dict(self.rejected.most_common()),
        )


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _reason_key(reason: str) -> str:
    """'blurred: sharpness 3.1 < 20.0 (...)' -> 'blurred' (counts group by kind, not by figure)."""
    return reason.split(":", 1)[0]


@dataclass
class StepOutcome:
    ready: Session | None = None  # has enough good crops: run inference, then call conclude()
    ended: list[Session] = field(default_factory=list)  # sessions that ended without a decision (retake)


class SessionTracker:
    def __init__(self, config: SessionConfig) -> None:
        self.config = config
        self.current: Session | None = None

    def _end_as_retake(self, session: Session, now: float, why: str) -> Session:
        top = ", ".join(f"{k} x{v}" for k, v in list(session.quality_summary().rejections.items())[:3])
        reason = f"{why}: {session.good}/{self.config.good_frames} good frames" + (f" (rejected: {top})" if top else "")
        session.decision = Decision(RETAKE, reason=reason)
        session.decided_at = now
        return session

    def step(self, now: float, face: Face | None, crop: np.ndarray | None, reasons: list[str]) -> StepOutcome:
        """One processed frame: the subject face (or None), its aligned crop and failing-gate reasons."""
        out = StepOutcome()
        s = self.current
        if s is not None and face is not None and iou(s.box, face.box) < self.config.same_subject_iou:
            # A different person stepped in.
            if s.decision is None:
                out.ended.append(self._end_as_retake(s, now, "subject changed"))
            s = self.current = None
        if face is None:
            if s is not None and now - s.last_seen > self.config.face_lost_s:
                if s.decision is None and s.frames > 0:
                    out.ended.append(self._end_as_retake(s, now, "face left before enough good frames"))
                self.current = None
            return out
        if s is None:
            s = self.current = Session(id=uuid.uuid4().hex, started_at=now, last_seen=now, box=face.box)
        s.last_seen = now
        s.box = face.box
        if s.decision is not None:
            return out  # decided: wait for this person to leave
        s.frames += 1
        if reasons or crop is None:
            for r in reasons or ["no crop"]:
                s.rejected[_reason_key(r)] += 1
        else:
            if s.first_good_at is None:
                s.first_good_at = now
            s.crops.append(crop)
            s.good += 1
        if s.first_good_at is not None and now - s.first_good_at > self.config.window_s and s.good < self.config.good_frames:
            # Too slow: keep only the good frames inside the window.
            out.ended.append(self._end_as_retake(s, now, f"fewer good frames than needed within {self.config.window_s:.0f} s"))
            return out
        if s.good >= self.config.good_frames:
            out.ready = s
        return out

    def conclude(self, session: Session, decision: Decision, now: float) -> Session:
        """Record the decision for a session returned as ``ready``; its crops are dropped from memory."""
        session.decision = decision
        session.decided_at = now
        session.crops = session.crops[:0]
        return session
