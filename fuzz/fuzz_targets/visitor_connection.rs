//! One visitor connection's bytes through the HTTP edge (stateful): the target only ever
//! receives whole, well-framed requests.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_server::fuzzing::visitor::visitor_connection(data));
