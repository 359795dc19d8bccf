"""Ranking metrics, evaluation protocols, the comprehensive report, statistics."""
