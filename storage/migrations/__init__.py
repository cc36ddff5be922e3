"""Alembic migration scripts, shipped inside the package so ``Database.migrate()`` finds them."""
