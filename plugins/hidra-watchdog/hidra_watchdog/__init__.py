"""HiDRA event sources ``watchdog`` (native file-system observers) and ``polling`` (network shares)."""
