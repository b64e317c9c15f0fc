"""The domain core: settings, models, the scan store, the queue, the URL policy, the database pool."""
