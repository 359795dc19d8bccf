"""Recommendations, explanations and cold start from a trained model."""
