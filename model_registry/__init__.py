"""The model registry: pools, models and their versions, stored with SQLAlchemy."""
