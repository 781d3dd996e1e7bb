//! Redis conformance: every case of `tests/conformance/*.txt` is sent to a follower of a 3-node
//! raft-kv cluster and its raw RESP reply compared byte for byte with the expected one. Where
//! `redis-server` is installed (CI installs it) the same table also runs against a fresh
//! redis-server, so the expectations are Redis's own and cannot drift.
//!
//! Table format, one case per two lines:
//! ```text
//! SET "a key" "x\x00y"       # arguments as redis-cli reads them (quotes, \xHH escapes)
//! => +OK                     # the reply both must give
//! ```
//! Replies: `+simple`, `-error text`, `:42`, `"bulk"`, `nil` (null bulk), `*nil` (null
//! array), `[item, item]` (array), `any` (not compared). `=>raft-kv` and `=>redis` give the
//! reply of one side where raft-kv deliberately differs (listed in the README); `=>` alone is
//! both. `=>unordered` is both, with the items of every array compared as a multiset (a set's
//! members, which Redis answers in its hash table's order).

mod common;

use bytes::{Bytes, BytesMut};
use common::Cluster;
use redis_protocol::resp2::decode::decode;
use redis_protocol::resp2::encode::extend_encode;
use redis_protocol::resp2::types::BytesFrame;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The expectation that accepts any reply.
const ANY: &[u8] = b"(any)";

#[derive(Debug)]
struct Case {
    file: String,
    line: usize,
    argv: Vec<Vec<u8>>,
    raft_kv: Vec<u8>,
    redis: Vec<u8>,
    /// Arrays compared as multisets.
    unordered: bool,
}

fn load_cases() -> Vec<Case> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    files.sort();
    let mut cases = Vec::new();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let mut current: Option<Case> = None;
        for (i, raw) in text.lines().enumerate() {
            // Trailing spaces matter in replies (Redis's unknown-command error ends in one).
            let line = raw.trim_start();
            let at = format!("{name}:{}", i + 1);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix("=>") {
                let case =
                    current.as_mut().unwrap_or_else(|| panic!("{at}: a reply before a command"));
                let (side, reply) = match rest.split_once(' ') {
                    Some((side, reply)) if !side.is_empty() => (side, reply),
                    _ => ("", rest.trim_start()),
                };
                // `any`: not compared (a reply that depends on the side's internals).
                let bytes = if reply.trim() == "any" {
                    ANY.to_vec()
                } else {
                    encode_expected(reply).unwrap_or_else(|e| panic!("{at}: {e}"))
                };
                match side {
                    "" | "unordered" => {
                        case.unordered = side == "unordered";
                        case.raft_kv = bytes.clone();
                        case.redis = bytes;
                    }
                    "raft-kv" => case.raft_kv = bytes,
                    "redis" => case.redis = bytes,
                    other => panic!("{at}: unknown side {other:?}"),
                }
                continue;
            }
            if let Some(done) = current.take() {
                cases.push(done);
            }
            let argv = split_args(line.trim_end()).unwrap_or_else(|e| panic!("{at}: {e}"));
            current = Some(Case {
                file: name.clone(),
                line: i + 1,
                argv,
                raft_kv: Vec::new(),
                redis: Vec::new(),
                unordered: false,
            });
        }
        cases.extend(current.take());
    }
    for c in &cases {
        assert!(!c.raft_kv.is_empty() && !c.redis.is_empty(), "{}:{} has no reply", c.file, c.line);
    }
    cases
}

/// Splits a command line as redis-cli does: spaces separate, double quotes group, and inside
/// them `\xHH`, `\n`, `\r`, `\t`, `\"` and `\\` are escapes.
fn split_args(line: &str) -> Result<Vec<Vec<u8>>, String> {
    let b = line.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b' ' {
            i += 1;
            continue;
        }
        if b[i] == b'"' {
            let (arg, used) = quoted(&b[i..])?;
            out.push(arg);
            i += used;
        } else {
            let end = b[i..].iter().position(|c| *c == b' ').map_or(b.len(), |n| i + n);
            out.push(b[i..end].to_vec());
            i = end;
        }
    }
    Ok(out)
}

/// The double-quoted string at the start of `b` (escapes resolved), and how many bytes it
/// used, quotes included.
fn quoted(b: &[u8]) -> Result<(Vec<u8>, usize), String> {
    let mut s = Vec::new();
    let mut j = 1;
    loop {
        match b.get(j) {
            None => return Err("unterminated quote".into()),
            Some(b'"') => return Ok((s, j + 1)),
            Some(b'\\') => {
                let (byte, used) = unescape(&b[j + 1..])?;
                s.push(byte);
                j += 1 + used;
            }
            Some(c) => {
                s.push(*c);
                j += 1;
            }
        }
    }
}

/// One escape after a backslash: the byte, and how many bytes it used.
fn unescape(b: &[u8]) -> Result<(u8, usize), String> {
    match b.first() {
        Some(b'n') => Ok((b'\n', 1)),
        Some(b'r') => Ok((b'\r', 1)),
        Some(b't') => Ok((b'\t', 1)),
        Some(b'"') => Ok((b'"', 1)),
        Some(b'\\') => Ok((b'\\', 1)),
        Some(b'x') if b.len() >= 3 => {
            let hex = std::str::from_utf8(&b[1..3]).map_err(|e| e.to_string())?;
            Ok((u8::from_str_radix(hex, 16).map_err(|e| e.to_string())?, 3))
        }
        _ => Err("bad escape".into()),
    }
}

/// The RESP bytes of an expected reply written in the table's notation.
fn encode_expected(text: &str) -> Result<Vec<u8>, String> {
    let b = text.trim_start().as_bytes();
    match b.first() {
        Some(b'+') | Some(b'-') | Some(b':') => {
            let mut out = b.to_vec();
            out.extend_from_slice(b"\r\n");
            Ok(out)
        }
        _ => {
            let mut out = Vec::new();
            let used = encode_value(b, &mut out)?;
            if b[used..].iter().any(|c| *c != b' ') {
                return Err(format!("trailing text after a reply: {text:?}"));
            }
            Ok(out)
        }
    }
}

/// Encodes one value of the notation (a bulk, nil, an integer or an array) from the front of
/// `b`; returns how many bytes it used.
fn encode_value(b: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
    let mut i = 0;
    while b.get(i) == Some(&b' ') {
        i += 1;
    }
    let rest = &b[i..];
    if rest.starts_with(b"*nil") {
        out.extend_from_slice(b"*-1\r\n");
        return Ok(i + 4);
    }
    if rest.starts_with(b"nil") {
        out.extend_from_slice(b"$-1\r\n");
        return Ok(i + 3);
    }
    match rest.first() {
        Some(b'+') | Some(b'-') => {
            // A simple string or an error inside an array: up to the next ',' or ']'.
            let end = rest.iter().position(|c| *c == b',' || *c == b']').unwrap_or(rest.len());
            out.extend_from_slice(rest[..end].trim_ascii_end());
            out.extend_from_slice(b"\r\n");
            Ok(i + end)
        }
        Some(b'"') => {
            let (s, used) = quoted(rest)?;
            out.extend_from_slice(format!("${}\r\n", s.len()).as_bytes());
            out.extend_from_slice(&s);
            out.extend_from_slice(b"\r\n");
            Ok(i + used)
        }
        Some(b':') => {
            let end = rest.iter().position(|c| *c == b',' || *c == b']').unwrap_or(rest.len());
            out.extend_from_slice(rest[..end].trim_ascii().as_ref());
            out.extend_from_slice(b"\r\n");
            Ok(i + end)
        }
        Some(b'[') => {
            let mut items = Vec::new();
            let mut j = 1;
            let mut count = 0;
            loop {
                while rest.get(j) == Some(&b' ') {
                    j += 1;
                }
                match rest.get(j) {
                    None => return Err("unterminated array".into()),
                    Some(b']') => break,
                    Some(b',') => j += 1,
                    Some(_) => {
                        j += encode_value(&rest[j..], &mut items)?;
                        count += 1;
                    }
                }
            }
            out.extend_from_slice(format!("*{count}\r\n").as_bytes());
            out.extend_from_slice(&items);
            Ok(i + j + 1)
        }
        _ => Err(format!("cannot read a reply from {:?}", String::from_utf8_lossy(rest))),
    }
}

fn encode_request(argv: &[Vec<u8>]) -> Vec<u8> {
    let frame = BytesFrame::Array(
        argv.iter().map(|a| BytesFrame::BulkString(Bytes::copy_from_slice(a))).collect(),
    );
    let mut out = BytesMut::new();
    extend_encode(&mut out, &frame, false).expect("a well-formed frame");
    out.to_vec()
}

/// Reads exactly one RESP2 reply, returning its raw bytes.
fn read_reply(s: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    loop {
        let framed = decode(buf).unwrap_or_else(|e| panic!("not RESP2: {e}"));
        if let Some((_, len)) = framed {
            return buf.drain(..len).collect();
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).expect("reading a reply");
        assert!(n > 0, "connection closed before a whole reply arrived");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// A reply with the items of every array sorted (by their encoding), for `=>unordered`.
fn sorted(reply: &[u8]) -> Vec<u8> {
    fn sort(frame: BytesFrame) -> BytesFrame {
        match frame {
            BytesFrame::Array(items) => {
                let mut items: Vec<(Vec<u8>, BytesFrame)> = items
                    .into_iter()
                    .map(|f| {
                        let f = sort(f);
                        let mut b = BytesMut::new();
                        extend_encode(&mut b, &f, false).expect("a well-formed frame");
                        (b.to_vec(), f)
                    })
                    .collect();
                items.sort_by(|a, b| a.0.cmp(&b.0));
                BytesFrame::Array(items.into_iter().map(|(_, f)| f).collect())
            }
            other => other,
        }
    }
    match redis_protocol::resp2::decode::decode_bytes(&Bytes::copy_from_slice(reply)) {
        Ok(Some((frame, _))) => {
            let mut b = BytesMut::new();
            extend_encode(&mut b, &sort(frame), false).expect("a well-formed frame");
            b.to_vec()
        }
        _ => reply.to_vec(),
    }
}

/// Runs every case on one connection to `port`; returns the mismatches.
fn run_table(port: u16, cases: &[Case], pick: impl Fn(&Case) -> &[u8], who: &str) -> Vec<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let mut buf = Vec::new();
    let mut failures = Vec::new();
    for c in cases {
        s.write_all(&encode_request(&c.argv)).unwrap();
        let got = read_reply(&mut s, &mut buf);
        let want = pick(c);
        let same = if c.unordered { sorted(&got) == sorted(want) } else { got == want };
        if !same && want != ANY {
            let shown: Vec<String> =
                c.argv.iter().map(|a| String::from_utf8_lossy(a).to_string()).collect();
            failures.push(format!(
                "{who} {}:{} {:?}\n    want {:?}\n    got  {:?}",
                c.file,
                c.line,
                shown.join(" "),
                String::from_utf8_lossy(want),
                String::from_utf8_lossy(&got)
            ));
        }
    }
    failures
}

struct RedisServer(Child);

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fresh redis-server without persistence, or None when it is not installed.
fn start_redis_server() -> Option<(RedisServer, u16)> {
    let port = common::free_ports(1)[0];
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", ""])
        .args(["--appendonly", "no", "--daemonize", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = RedisServer(child);
    common::wait_until(Duration::from_secs(10), || TcpStream::connect(("127.0.0.1", port)).ok())
        .expect("redis-server did not open its port");
    Some((server, port))
}

#[test]
fn replies_match_redis_7_case_by_case() {
    let cases = load_cases();
    assert!(cases.len() > 50, "only {} cases", cases.len());
    let mut failures = Vec::new();
    match start_redis_server() {
        Some((_server, port)) => {
            failures.extend(run_table(port, &cases, |c| &c.redis, "redis-server"));
        }
        None if std::env::var_os("CI").is_some() => {
            panic!("redis-server is not installed: CI must check the table against it")
        }
        None => eprintln!("redis-server is not installed: checked against raft-kv only"),
    }
    let cluster = Cluster::start(3);
    let leader = cluster.leader(1).expect("a leader");
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let port = cluster.redis_ports[follower - 1];
    failures.extend(run_table(port, &cases, |c| &c.raft_kv, "raft-kv"));
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
