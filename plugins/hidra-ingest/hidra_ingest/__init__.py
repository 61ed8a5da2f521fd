"""HiDRA ``zmq_ingest`` event source: files pushed from memory by DAQ programs (``hidra_core.ingest.Ingest``)."""
