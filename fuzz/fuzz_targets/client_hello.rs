//! The ClientHello reader that finds the SNI for TLS passthrough.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_server::fuzzing::client_hello(data));
