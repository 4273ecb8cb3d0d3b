//! Arbitrary bytes as what the peer sent, into both handshake drivers, with and without a
//! secret: accepted or refused with an error, never a panic or a large allocation.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks the side and whether it holds a secret; the rest is the peer's bytes.
    let [how, input @ ..] = data else {
        return;
    };
    let authenticated = how & 1 == 1;
    if how & 2 == 0 {
        let _ = iotstream::fuzzing::server_handshake(input, authenticated);
    } else {
        let _ = iotstream::fuzzing::client_handshake(input, authenticated);
    }
});
