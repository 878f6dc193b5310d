"""The interpretability agent: providers, the loop and budgets."""
