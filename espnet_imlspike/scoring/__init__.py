"""Scoring of speaker models: closed-set identification (Table III's metric) and
verification (cosine scoring, EER)."""
