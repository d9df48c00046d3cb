//! The upstream response parser and the head it writes for the visitor.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_server::fuzzing::response(data));
