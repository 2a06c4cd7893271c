"""Small shared helpers: atomic writes, seeding, the cache folder."""
