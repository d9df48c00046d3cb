//! PROXY protocol v1 and v2 headers.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| showoff_server::fuzzing::proxy_header(data));
