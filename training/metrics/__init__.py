"""The paper's evaluation metrics (Tables 1 and 2), one per file; ``training.benchmark`` runs them."""
