"""The DataBuffer broker (``hidra-databuffer-broker``): DBW's REST API, state machine, audit trail and the writing
request sent as a bsread message on a PUSH socket (databuffer.md §2–§5).

Deviations from ``sf_databuffer_writer`` 0.3.2 (databuffer.md §13), each asserted by ``tests/test_broker*.py``:

* F1: a channels file over a limit (100 names, 2 ending in ``:FPICTURE``) refuses to start instead of running with
  no channels; an over-limit ``channels`` override is an error reply.
* F2: ``stop < start`` is an error reply; nothing is sent and the state is kept (DBW sent the reversed range).
* F3: a stop with a start but no parameters is the error "not configured" (DBW replied with a TypeError text).
* F4: a ``channels`` override is split by suffix like the file list; only a real ``.h5`` suffix becomes
  ``.IMAGES.h5`` (any other name gets ``.IMAGES.h5`` appended; DBW cut three characters blindly).
* F5: an audit write that fails is an error reply and nothing is sent (DBW only logged it).
* F11: ``--rest_host`` (127.0.0.1) instead of a hard-coded site host; ``--output_host`` (127.0.0.1) for the PUSH
  bind; the EPICS side-channel only runs with ``--epics_writer_url``.
"""
