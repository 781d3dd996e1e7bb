//! RESP framing for client connections, on the `redis-protocol` crate: request parsing (with
//! bounds checked before any byte is buffered or parsed, and Redis's inline commands) and reply
//! encoding. No I/O here; `client` drives it over sockets.

use crate::command::Reply;
use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::types::BytesFrame;

/// Limits on what a client may send.
#[derive(Clone, Copy, Debug)]
pub struct RequestLimits {
    /// Largest single argument (Redis's proto-max-bulk-len).
    pub bulk_bytes_max: usize,
    /// Largest whole request (all arguments together).
    pub request_bytes_max: usize,
    /// Most arguments in one request.
    pub args_max: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits { bulk_bytes_max: 16 << 20, request_bytes_max: 32 << 20, args_max: 1 << 20 }
    }
}

/// Longest inline command line, as Redis's PROTO_INLINE_MAX_SIZE.
const INLINE_BYTES_MAX: usize = 64 * 1024;

/// A protocol violation: answered with this error, then the connection is closed (as Redis does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl ProtocolError {
    fn new(msg: impl Into<String>) -> ProtocolError {
        ProtocolError(format!("ERR Protocol error: {}", msg.into()))
    }
}

/// Takes the next complete request off the front of `buf`: `Ok(None)` when more bytes are
/// needed, `Ok(Some(argv))` otherwise (an empty `argv` for a blank line or an empty array,
/// which Redis ignores).
pub fn next_request(
    buf: &mut BytesMut,
    limits: &RequestLimits,
) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    if buf.is_empty() {
        return Ok(None);
    }
    if buf[0] != b'*' {
        return next_inline(buf);
    }
    match scan_multibulk(buf, limits)? {
        Scan::Incomplete => Ok(None),
        Scan::Empty(len) => {
            let _ = buf.split_to(len);
            Ok(Some(Vec::new()))
        }
        Scan::Complete(len) => {
            let (frame, used, _) = decode_bytes_mut(buf)
                .map_err(|e| ProtocolError::new(e.details().to_string()))?
                .ok_or_else(|| ProtocolError::new("incomplete request after a complete scan"))?;
            debug_assert_eq!(used, len);
            match frame {
                BytesFrame::Array(items) => items
                    .into_iter()
                    .map(|f| match f {
                        BytesFrame::BulkString(b) => Ok(b),
                        _ => Err(ProtocolError::new("expected a bulk string")),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                _ => Err(ProtocolError::new("expected an array")),
            }
        }
    }
}

enum Scan {
    Incomplete,
    /// `*0` or `*-1`: nothing to run; the header's length.
    Empty(usize),
    /// A whole request of this many bytes is buffered.
    Complete(usize),
}

/// Reads a `\r\n`-terminated header line starting at `at`: the line's content and the
/// position after it, or None if incomplete.
fn header_line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let rest = &buf[at..];
    match rest.iter().position(|b| *b == b'\r') {
        Some(i) if i + 1 < rest.len() => {
            if rest[i + 1] != b'\n' {
                return Err(ProtocolError::new("expected CRLF after a length"));
            }
            Ok(Some((&rest[..i], at + i + 2)))
        }
        Some(_) => Ok(None),
        None if rest.len() > INLINE_BYTES_MAX => Err(ProtocolError::new("too big count string")),
        None => Ok(None),
    }
}

fn parse_len(digits: &[u8]) -> Option<i64> {
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Checks the shape and sizes of a multibulk request without parsing its payload, so an
/// oversized or hostile request is refused before anything is allocated for it.
fn scan_multibulk(buf: &[u8], limits: &RequestLimits) -> Result<Scan, ProtocolError> {
    let Some((count, mut at)) = header_line(buf, 1)? else { return Ok(Scan::Incomplete) };
    let count = parse_len(count).ok_or_else(|| ProtocolError::new("invalid multibulk length"))?;
    if count <= 0 {
        return Ok(Scan::Empty(at));
    }
    if count as usize > limits.args_max {
        return Err(ProtocolError::new("invalid multibulk length"));
    }
    let mut total: usize = 0;
    for _ in 0..count {
        let Some(&kind) = buf.get(at) else { return Ok(Scan::Incomplete) };
        if kind != b'$' {
            return Err(ProtocolError::new(format!("expected '$', got '{}'", kind as char)));
        }
        let Some((len, next)) = header_line(buf, at + 1)? else { return Ok(Scan::Incomplete) };
        let len = parse_len(len)
            .filter(|l| *l >= 0 && *l as usize <= limits.bulk_bytes_max)
            .ok_or_else(|| ProtocolError::new("invalid bulk length"))? as usize;
        total += len;
        if total > limits.request_bytes_max {
            return Err(ProtocolError::new("request too big"));
        }
        let end = next + len + 2;
        if buf.len() < end {
            return Ok(Scan::Incomplete);
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Err(ProtocolError::new("expected CRLF after a bulk string"));
        }
        at = end;
    }
    Ok(Scan::Complete(at))
}

/// An inline command (`PING\r\n`, as telnet or nc send), split like Redis's `sdssplitargs`.
fn next_inline(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, ProtocolError> {
    let Some(nl) = buf.iter().position(|b| *b == b'\n') else {
        if buf.len() > INLINE_BYTES_MAX {
            return Err(ProtocolError::new("too big inline request"));
        }
        return Ok(None);
    };
    let line = buf.split_to(nl + 1);
    let line = line[..nl].strip_suffix(b"\r").unwrap_or(&line[..nl]);
    split_args(line).map(Some).ok_or_else(|| ProtocolError::new("unbalanced quotes in request"))
}

/// Splits a line into arguments honouring "double" (with \n \r \t \b \a \\ \" \xHH escapes)
/// and 'single' quotes. None if quotes are unbalanced.
pub fn split_args(line: &[u8]) -> Option<Vec<Bytes>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == line.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        let (mut in_dq, mut in_sq) = (false, false);
        loop {
            let c = line.get(i).copied();
            if in_dq {
                match c? {
                    b'\\'
                        if i + 3 < line.len()
                            && line[i + 1] == b'x'
                            && line[i + 2].is_ascii_hexdigit()
                            && line[i + 3].is_ascii_hexdigit() =>
                    {
                        let hex = std::str::from_utf8(&line[i + 2..i + 4]).ok()?;
                        cur.push(u8::from_str_radix(hex, 16).ok()?);
                        i += 3;
                    }
                    b'\\' if i + 1 < line.len() => {
                        i += 1;
                        cur.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                    }
                    b'"' => {
                        // A closing quote must be followed by a space or the end.
                        if line.get(i + 1).is_some_and(|n| !n.is_ascii_whitespace()) {
                            return None;
                        }
                        in_dq = false;
                    }
                    other => cur.push(other),
                }
            } else if in_sq {
                match c? {
                    b'\\' if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        cur.push(b'\'');
                    }
                    b'\'' => {
                        if line.get(i + 1).is_some_and(|n| !n.is_ascii_whitespace()) {
                            return None;
                        }
                        in_sq = false;
                    }
                    other => cur.push(other),
                }
            } else {
                match c {
                    None => break,
                    Some(c) if c.is_ascii_whitespace() => break,
                    Some(b'"') => in_dq = true,
                    Some(b'\'') => in_sq = true,
                    Some(other) => cur.push(other),
                }
            }
            i += 1;
        }
        args.push(Bytes::from(cur));
    }
}

/// Appends the encoding of `reply` in RESP `protocol` (2 or 3, as HELLO chose) to `out`.
/// Written out rather than through a frame library: Redis 7.0 sends doubles as `%.17g`
/// (`0.1` is `0.10000000000000001`), and a null array nested in an array (EXEC's reply) as
/// `*-1`, which RESP2 frame types cannot say.
pub fn encode_reply(reply: Reply, protocol: u8, out: &mut BytesMut) {
    write_reply(&reply, protocol >= 3, out);
}

fn line(out: &mut BytesMut, prefix: u8, text: &[u8]) {
    out.extend_from_slice(&[prefix]);
    out.extend_from_slice(text);
    out.extend_from_slice(b"\r\n");
}

fn bulk(out: &mut BytesMut, b: &[u8]) {
    line(out, b'$', b.len().to_string().as_bytes());
    out.extend_from_slice(b);
    out.extend_from_slice(b"\r\n");
}

fn write_reply(reply: &Reply, resp3: bool, out: &mut BytesMut) {
    let len = |n: usize| n.to_string();
    match reply {
        Reply::Simple(s) => line(out, b'+', s.as_bytes()),
        Reply::Status(s) => line(out, b'+', s.as_bytes()),
        Reply::Error(e) => line(out, b'-', e.replace(['\r', '\n'], " ").as_bytes()),
        Reply::Integer(n) => line(out, b':', n.to_string().as_bytes()),
        Reply::Bulk(b) => bulk(out, b),
        Reply::Null if resp3 => out.extend_from_slice(b"_\r\n"),
        Reply::Null => out.extend_from_slice(b"$-1\r\n"),
        Reply::NullArray if resp3 => out.extend_from_slice(b"_\r\n"),
        Reply::NullArray => out.extend_from_slice(b"*-1\r\n"),
        Reply::Double(bits) => {
            let text = raft_kv_core::kv::zsets::format_score(f64::from_bits(*bits));
            if resp3 {
                line(out, b',', text.as_bytes());
            } else {
                bulk(out, text.as_bytes());
            }
        }
        Reply::Array(items) => {
            line(out, b'*', len(items.len()).as_bytes());
            for i in items {
                write_reply(i, resp3, out);
            }
        }
        Reply::Set(items) => {
            line(out, if resp3 { b'~' } else { b'*' }, len(items.len()).as_bytes());
            for i in items {
                write_reply(i, resp3, out);
            }
        }
        Reply::Map(pairs) if resp3 => {
            line(out, b'%', len(pairs.len()).as_bytes());
            for (k, v) in pairs {
                write_reply(k, resp3, out);
                write_reply(v, resp3, out);
            }
        }
        Reply::Pairs(pairs) if resp3 => {
            line(out, b'*', len(pairs.len()).as_bytes());
            for (k, v) in pairs {
                out.extend_from_slice(b"*2\r\n");
                write_reply(k, resp3, out);
                write_reply(v, resp3, out);
            }
        }
        Reply::Map(pairs) | Reply::Pairs(pairs) => {
            line(out, b'*', len(pairs.len() * 2).as_bytes());
            for (k, v) in pairs {
                write_reply(k, resp3, out);
                write_reply(v, resp3, out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Vec<Bytes>>, ProtocolError> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(argv) = next_request(&mut buf, &RequestLimits::default())? {
            out.push(argv);
        }
        Ok(out)
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn pipelined_requests_come_out_in_order() {
        let got = parse_all(
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![vec![b("SET"), b("k"), b("v")], vec![b("GET"), b("k")], vec![b("PING")]]
        );
    }

    #[test]
    fn incomplete_requests_wait_for_more_bytes() {
        let full = b"*2\r\n$3\r\nGET\r\n$5\r\nk\0\r\ny\r\n";
        for cut in 1..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(next_request(&mut buf, &RequestLimits::default()), Ok(None), "cut at {cut}");
        }
        assert_eq!(
            parse_all(b"*2\r\n$3\r\nGET\r\n$5\r\nk\0\r\ny\r\n").unwrap(),
            vec![vec![b("GET"), b("k\0\r\ny")]]
        );
    }

    #[test]
    fn malformed_and_oversized_requests_are_refused_before_buffering() {
        let limits = RequestLimits::default();
        let cases: &[(&[u8], &str)] = &[
            (b"*1\r\n$99999999999\r\n", "ERR Protocol error: invalid bulk length"),
            (b"*1\r\n$-5\r\n", "ERR Protocol error: invalid bulk length"),
            (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
            (b"*99999999999\r\n", "ERR Protocol error: invalid multibulk length"),
            (b"*1\r\n:5\r\n", "ERR Protocol error: expected '$', got ':'"),
            (b"*1\r\n*1\r\n", "ERR Protocol error: expected '$', got '*'"),
            (b"*1\r\n$1\r\nabc\r\n", "ERR Protocol error: expected CRLF after a bulk string"),
            (b"\"unbalanced\r\n", "ERR Protocol error: unbalanced quotes in request"),
        ];
        for (input, want) in cases {
            let mut buf = BytesMut::from(*input);
            assert_eq!(
                next_request(&mut buf, &limits),
                Err(ProtocolError(want.to_string())),
                "{input:?}"
            );
        }
        let mut huge = BytesMut::from(&b"*2\r\n$3\r\nGET\r\n"[..]);
        huge.extend_from_slice(format!("${}\r\n", (16 << 20) + 1).as_bytes());
        assert!(next_request(&mut huge, &limits).is_err());
    }

    #[test]
    fn inline_commands_split_like_redis() {
        assert_eq!(
            parse_all(b"set k \"a b\\x41\\n\"\r\n").unwrap(),
            vec![vec![b("set"), b("k"), b("a bA\n")]]
        );
        assert_eq!(parse_all(b"echo 'it\\'s'\n").unwrap(), vec![vec![b("echo"), b("it's")]]);
        assert_eq!(parse_all(b"\r\n*0\r\n").unwrap(), vec![Vec::<Bytes>::new(), Vec::new()]);
    }

    #[test]
    fn replies_encode_as_resp2() {
        let mut out = BytesMut::new();
        encode_reply(Reply::Bulk(Bytes::from_static(b"a\0b")), 2, &mut out);
        encode_reply(Reply::Null, 2, &mut out);
        encode_reply(Reply::Integer(-3), 2, &mut out);
        encode_reply(Reply::error("ERR x"), 2, &mut out);
        encode_reply(Reply::Array(vec![Reply::ok()]), 2, &mut out);
        assert_eq!(&out[..], b"$3\r\na\0b\r\n$-1\r\n:-3\r\n-ERR x\r\n*1\r\n+OK\r\n");
    }

    #[test]
    fn doubles_sets_pairs_and_nested_null_arrays_encode_as_redis_7_0_sends_them() {
        let b = |s: &'static str| Reply::Bulk(Bytes::from_static(s.as_bytes()));
        let reply = Reply::Array(vec![
            Reply::Double(0.1f64.to_bits()),
            Reply::Set(vec![b("m")]),
            Reply::Pairs(vec![(b("a"), Reply::Double(f64::INFINITY.to_bits()))]),
            Reply::NullArray,
            Reply::Map(vec![(b("k"), Reply::Null)]),
        ]);
        let mut two = BytesMut::new();
        encode_reply(reply.clone(), 2, &mut two);
        assert_eq!(
            &two[..],
            &b"*5\r\n$19\r\n0.10000000000000001\r\n*1\r\n$1\r\nm\r\n*2\r\n$1\r\na\r\n$3\r\ninf\r\n*-1\r\n*2\r\n$1\r\nk\r\n$-1\r\n"[..]
        );
        let mut three = BytesMut::new();
        encode_reply(reply, 3, &mut three);
        assert_eq!(
            &three[..],
            &b"*5\r\n,0.10000000000000001\r\n~1\r\n$1\r\nm\r\n*1\r\n*2\r\n$1\r\na\r\n,inf\r\n_\r\n%1\r\n$1\r\nk\r\n_\r\n"[..]
        );
    }
}
