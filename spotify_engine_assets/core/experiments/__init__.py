"""Experiment records, A/B plans and the champion; hyperparameter studies and their budget."""
