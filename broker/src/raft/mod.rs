//! The Raft consensus core: a pure, deterministic state machine with no I/O.
