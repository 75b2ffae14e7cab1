"""The domain: indexes and their rules, the mirror and its cache, stored pages."""
