"""The EIGER FileWriter path: the ``eiger`` event source (listing the DCU's files) and the ``http`` fetcher
(streamed download, ``DELETE`` only after the storage proof). See eiger.md §3."""
