//! Arbitrary bytes as a backend reply: `frame_reply` never panics and never claims a reply
//! longer than the input, whole or resumed piece by piece.
#![no_main]

use libfuzzer_sys::fuzz_target;
use memroute::protocol::reply::{frame_reply, ReplyKind};

fuzz_target!(|data: &[u8]| {
    for kind in [
        ReplyKind::Line,
        ReplyKind::Retrieval,
        ReplyKind::RetrievalFlagsInValue,
    ] {
        let mut resume = 0;
        let whole = frame_reply(data, kind, &mut resume);
        if let Ok(Some(n)) = whole {
            assert!(n <= data.len() && n > 0);
        }
        // The same input arriving in growing prefixes, resuming each time.
        let mut resume = 0;
        let step = data.first().map_or(1, |b| *b as usize % 16 + 1);
        let mut end = 0;
        let mut pieces = None;
        while end < data.len() {
            end = (end + step).min(data.len());
            match frame_reply(&data[..end], kind, &mut resume) {
                Ok(None) => assert!(resume <= end),
                Ok(Some(n)) => {
                    assert!(n <= end);
                    pieces = Some(Ok(Some(n)));
                    break;
                }
                Err(e) => {
                    pieces = Some(Err(e));
                    break;
                }
            }
        }
        // A complete reply found in pieces is the one found whole.
        if let Some(Ok(Some(n))) = pieces {
            assert_eq!(whole, Ok(Some(n)));
        }
    }
});
