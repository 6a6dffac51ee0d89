"""All K1 tables, imported by Alembic's env so that autogenerate sees them."""

from k1.db import Base

__all__ = ["Base"]
