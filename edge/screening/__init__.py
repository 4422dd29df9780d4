"""Screening sessions: one subject, N good frames, one decision (refer / no finding / retake)."""
