"""The Alembic migrations, shipped inside the package so that any install can make the schema.

``homepot.db.run_migrations`` configures Alembic from this directory; developers use the
repository's ``alembic.ini`` (``alembic -c alembic.ini revision ...``), which points here too.
"""
