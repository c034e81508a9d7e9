//! Arbitrary bytes through the client codec: never panics, every request is well formed,
//! no more bytes are consumed than given, and feeding the input in chunks (of a size taken
//! from the first byte) decodes exactly what decoding it whole does.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use memroute::protocol::{ClientCodec, CodecLimits, Decoded};

/// An owned summary of one decoded item, for comparing runs.
#[derive(Debug, PartialEq, Eq)]
enum Item {
    Req(Vec<u8>, bool, Vec<u8>),
    Invalid(&'static [u8]),
    Fatal(&'static [u8]),
}

fn limits() -> CodecLimits {
    // Small limits so that the too-large and too-long paths are reachable.
    CodecLimits {
        item_size_max: 64,
        max_retrieval_line: 512,
    }
}

fn check(d: Decoded) -> Item {
    match d {
        Decoded::Request(r) => {
            assert!(r.frame.ends_with(b"\n"));
            if r.command.is_retrieval() || r.command.is_single_key() {
                assert!(r.keys().next().is_some());
                for k in r.keys() {
                    assert!((1..=250).contains(&k.len()));
                    assert!(k.iter().all(|b| *b > b' ' && *b != 0x7f));
                }
            }
            if r.command.is_storage() {
                let declared: usize = r
                    .line()
                    .split(|b| *b == b' ')
                    .filter(|t| !t.is_empty())
                    .nth(4)
                    .and_then(|t| std::str::from_utf8(t).ok()?.parse().ok())
                    .expect("storage line has a length");
                assert_eq!(r.data().len(), declared);
                assert!(r.data().len() <= limits().item_size_max);
            }
            let (a, b) = r.upstream_bytes();
            assert_eq!(r.noreply(), b.is_some());
            let mut up = a.to_vec();
            up.extend_from_slice(b.as_deref().unwrap_or_default());
            assert!(up.len() <= r.frame.len());
            Item::Req(r.frame.to_vec(), r.noreply(), up)
        }
        Decoded::Invalid(m) => Item::Invalid(m),
        Decoded::Fatal(m) => Item::Fatal(m),
    }
}

fn run(input: &[u8], chunk: usize) -> Vec<Item> {
    let mut codec = ClientCodec::new(limits());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut fed = 0;
    let mut consumed = 0;
    for piece in input.chunks(chunk) {
        buf.extend_from_slice(piece);
        fed += piece.len();
        loop {
            let before = buf.len();
            let Some(d) = codec.decode_item(&mut buf) else {
                consumed += before - buf.len();
                break;
            };
            consumed += before - buf.len();
            let fatal = matches!(d, Decoded::Fatal(_));
            out.push(check(d));
            if fatal {
                assert!(consumed <= fed);
                return out;
            }
        }
        assert!(consumed <= fed);
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let whole = run(input, input.len().max(1));
    let chunked = run(input, first as usize % 64 + 1);
    assert_eq!(whole, chunked);
});
