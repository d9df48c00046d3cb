//! A control session driven by a script of client frames (stateful): afterwards the server
//! holds no session, route, pending stream or lease.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_server::fuzzing::session::control_session_bytes(data));
