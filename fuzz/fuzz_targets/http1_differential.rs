//! Where each request ends, by the edge and by hyper (differential).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_server::fuzzing::visitor::http1_differential(data));
