"""Building blocks without Flask or a database: settings, dists, upstream, storage, locks."""
