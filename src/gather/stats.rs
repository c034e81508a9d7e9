//! `stats` subcommands that describe a server's memory (`items`, `slabs`, `sizes`,
//! `cachedump`) and the ones that act on it (`reset`, `detail`) are sent to every backend of
//! the pool; their answers are combined here into one reply a memcached parser accepts.
//!
//! - `items`, `slabs`, `sizes`: one `STAT` line per name, in the order names first appear;
//!   counters are summed over the backends, except values that describe a single item or a
//!   setting (ages, chunk sizes, the eviction time of the last evicted item, the number of
//!   slab classes in use), where the largest is given; a value that is no number is the first
//!   backend's.
//! - `cachedump`, `detail dump`: every backend's lines, one backend after the other.
//! - one-line answers (`RESET`, `OK`, an error): the common answer, or the first that is not
//!   the first backend's success.

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};

use crate::error;
use crate::error::Answer;
use crate::protocol::reply;

/// How the backends' answers to a forwarded `stats` subcommand are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Merge {
    /// `STAT` counters summed by name.
    Sum,
    /// Lines concatenated.
    Concat,
}

/// Whether `stats <args>` goes to the backends, and how their answers combine.
pub fn forwarded(args: &[u8]) -> Option<Merge> {
    let sub = args.split(|b| *b == b' ').find(|t| !t.is_empty())?;
    match sub {
        b"items" | b"slabs" | b"sizes" => Some(Merge::Sum),
        b"cachedump" | b"reset" | b"detail" => Some(Merge::Concat),
        _ => None,
    }
}

/// Names whose values describe one item or a setting: the largest is kept, not the sum.
fn not_additive(name: &[u8]) -> bool {
    let last = name.rsplit(|b| *b == b':').next().unwrap_or(name);
    matches!(
        last,
        b"chunk_size"
            | b"chunks_per_page"
            | b"age"
            | b"age_hot"
            | b"age_warm"
            | b"evicted_time"
            | b"active_slabs"
    )
}

/// The lines of a multi-line answer, without its `END`; `None` for a one-line answer.
fn body(answer: &[u8]) -> Option<&[u8]> {
    if answer == reply::END {
        return Some(b"");
    }
    answer
        .strip_suffix(reply::END)
        .filter(|b| b.ends_with(b"\r\n"))
}

/// Combines the backends' answers (in pool order) into the client's reply.
pub fn combine(merge: Merge, answers: &[Answer]) -> Bytes {
    if let Some(Err(e)) = answers.iter().find(|a| a.is_err()) {
        return Bytes::from_static(error::reply(*e));
    }
    let answers: Vec<&Bytes> = answers.iter().filter_map(|a| a.as_ref().ok()).collect();
    let Some(first) = answers.first() else {
        return Bytes::from_static(reply::END);
    };
    if answers.iter().any(|a| body(a).is_none()) {
        // One-line answers: all alike, or the first that differs from the first.
        return (*answers.iter().find(|a| *a != first).unwrap_or(first)).clone();
    }
    let mut out = BytesMut::new();
    match merge {
        Merge::Concat => {
            for a in &answers {
                out.put_slice(body(a).expect("checked above"));
            }
        }
        Merge::Sum => {
            let mut order: Vec<(&[u8], Value<'_>)> = Vec::new();
            let mut index: HashMap<&[u8], usize> = HashMap::new();
            for a in &answers {
                for line in body(a).expect("checked above").split(|b| *b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let Some(rest) = line.strip_prefix(b"STAT ") else {
                        continue;
                    };
                    let (name, value) = match memchr::memchr(b' ', rest) {
                        Some(i) => (&rest[..i], &rest[i + 1..]),
                        None => (rest, &b""[..]),
                    };
                    let value = Value::of(value);
                    match index.get(name) {
                        Some(&i) => order[i].1 = order[i].1.combine(value, not_additive(name)),
                        None => {
                            index.insert(name, order.len());
                            order.push((name, value));
                        }
                    }
                }
            }
            for (name, value) in order {
                out.put_slice(b"STAT ");
                out.put_slice(name);
                out.put_u8(b' ');
                value.write(&mut out);
                out.put_slice(b"\r\n");
            }
        }
    }
    out.put_slice(reply::END);
    out.freeze()
}

/// A `STAT` value: a whole number, a decimal, or text.
#[derive(Clone, Copy)]
enum Value<'a> {
    Int(u64),
    Float(f64, usize),
    Text(&'a [u8]),
}

impl<'a> Value<'a> {
    fn of(text: &'a [u8]) -> Value<'a> {
        let s = std::str::from_utf8(text).unwrap_or("");
        if let Ok(n) = s.parse() {
            return Value::Int(n);
        }
        match (s.parse::<f64>(), s.split_once('.')) {
            (Ok(f), Some((_, decimals))) => Value::Float(f, decimals.len()),
            _ => Value::Text(text),
        }
    }

    fn combine(self, other: Value<'a>, keep_largest: bool) -> Value<'a> {
        match (self, other) {
            (Value::Int(a), Value::Int(b)) if keep_largest => Value::Int(a.max(b)),
            (Value::Int(a), Value::Int(b)) => Value::Int(a.saturating_add(b)),
            (Value::Float(a, d), Value::Float(b, _)) if keep_largest => Value::Float(a.max(b), d),
            (Value::Float(a, d), Value::Float(b, _)) => Value::Float(a + b, d),
            (first, _) => first,
        }
    }

    fn write(self, out: &mut BytesMut) {
        match self {
            Value::Int(n) => out.put_slice(n.to_string().as_bytes()),
            Value::Float(f, d) => out.put_slice(format!("{f:.d$}").as_bytes()),
            Value::Text(t) => out.put_slice(t),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::UpstreamError;

    fn ok(s: &'static str) -> Answer {
        Ok(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn counters_sum_and_sizes_take_the_largest() {
        let a =
            ok("STAT items:1:number 5\r\nSTAT items:1:age 30\r\nSTAT items:1:evicted 1\r\nEND\r\n");
        let b =
            ok("STAT items:1:number 7\r\nSTAT items:1:age 90\r\nSTAT items:5:number 2\r\nEND\r\n");
        assert_eq!(
            combine(Merge::Sum, &[a, b]),
            "STAT items:1:number 12\r\nSTAT items:1:age 90\r\nSTAT items:1:evicted 1\r\nSTAT items:5:number 2\r\nEND\r\n"
        );
        let s = ok("STAT sizes_status disabled\r\nEND\r\n");
        assert_eq!(
            combine(Merge::Sum, &[s.clone(), s]),
            "STAT sizes_status disabled\r\nEND\r\n"
        );
        let a =
            ok("STAT 1:chunk_size 96\r\nSTAT total_malloced 100\r\nSTAT active_slabs 2\r\nEND\r\n");
        let b =
            ok("STAT 1:chunk_size 96\r\nSTAT total_malloced 50\r\nSTAT active_slabs 3\r\nEND\r\n");
        assert_eq!(
            combine(Merge::Sum, &[a, b]),
            "STAT 1:chunk_size 96\r\nSTAT total_malloced 150\r\nSTAT active_slabs 3\r\nEND\r\n"
        );
    }

    #[test]
    fn dumps_concatenate_and_one_line_answers_agree_or_differ() {
        let a = ok("ITEM a [1 b; 0 s]\r\nEND\r\n");
        let b = ok("END\r\n");
        let c = ok("ITEM c [2 b; 0 s]\r\nEND\r\n");
        assert_eq!(
            combine(Merge::Concat, &[a, b, c]),
            "ITEM a [1 b; 0 s]\r\nITEM c [2 b; 0 s]\r\nEND\r\n"
        );
        let r = ok("RESET\r\n");
        assert_eq!(combine(Merge::Concat, &[r.clone(), r.clone()]), "RESET\r\n");
        let e = ok("CLIENT_ERROR bad command line\r\n");
        assert_eq!(
            combine(Merge::Concat, &[r, e]),
            "CLIENT_ERROR bad command line\r\n"
        );
        assert_eq!(
            combine(Merge::Sum, &[ok("END\r\n"), Err(UpstreamError::Timeout)]),
            error::reply(UpstreamError::Timeout)
        );
    }

    #[test]
    fn only_memory_and_admin_subcommands_are_forwarded() {
        assert_eq!(forwarded(b"items"), Some(Merge::Sum));
        assert_eq!(forwarded(b" slabs "), Some(Merge::Sum));
        assert_eq!(forwarded(b"cachedump 1 10"), Some(Merge::Concat));
        assert_eq!(forwarded(b""), None);
        assert_eq!(forwarded(b"settings"), None);
        assert_eq!(forwarded(b"backends"), None);
    }
}
