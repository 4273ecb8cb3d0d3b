//! Arbitrary bytes into the TCP link's frame decoder: frames or an error, never a panic, and
//! never more memory held than the largest frame plus its length prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes pick the frame limit (1..=65536) and the push size (1..=256), so
    // that the limit and the chunking are explored too; the rest is the stream.
    let [limit, chunk, stream @ ..] = data else {
        return;
    };
    let max_frame_bytes = (u32::from(*limit) << 8) + 1;
    let chunk_bytes = usize::from(*chunk) + 1;
    let _ = iotstream::fuzzing::decode_frames(stream, max_frame_bytes, chunk_bytes);
});
