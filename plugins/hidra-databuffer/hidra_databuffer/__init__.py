"""HiDRA's DataBuffer writer: bsread recording into a local data buffer, the REST broker, HDF5 writers, replay."""
