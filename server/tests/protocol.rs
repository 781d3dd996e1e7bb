//! The Redis protocol as clients see it: exact replies and errors, pipelining order, binary
//! values, and hostile input that must get an error, never a crash or an unbounded allocation.

mod common;

use common::Cluster;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn raw(c: &Cluster, id: usize) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", c.redis_ports[id - 1])).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// Sends `req` and reads until exactly `want.len()` bytes arrived, then compares.
fn exchange(s: &mut TcpStream, req: &[u8], want: &[u8]) {
    s.write_all(req).unwrap();
    let mut got = vec![0u8; want.len()];
    s.read_exact(&mut got)
        .unwrap_or_else(|e| panic!("reading reply to {:?}: {e}", String::from_utf8_lossy(req)));
    assert_eq!(
        String::from_utf8_lossy(&got),
        String::from_utf8_lossy(want),
        "reply to {:?}",
        String::from_utf8_lossy(req)
    );
}

fn assert_closed(s: &mut TcpStream) {
    let mut b = [0u8; 1];
    assert_eq!(s.read(&mut b).unwrap_or(0), 0, "connection should be closed");
}

#[test]
fn replies_and_errors_are_byte_identical_to_redis() {
    let c = Cluster::start(3);
    let mut s = raw(&c, 2);
    let cases: &[(&[u8], &[u8])] = &[
        (b"PING\r\n", b"+PONG\r\n"),
        (b"*2\r\n$4\r\nPING\r\n$2\r\nhi\r\n", b"$2\r\nhi\r\n"),
        (b"*2\r\n$4\r\nECHO\r\n$3\r\na\0b\r\n", b"$3\r\na\0b\r\n"),
        (b"*1\r\n$3\r\nGET\r\n", b"-ERR wrong number of arguments for 'get' command\r\n"),
        (
            b"*3\r\n$3\r\nfoo\r\n$1\r\na\r\n$1\r\nb\r\n",
            b"-ERR unknown command 'foo', with args beginning with: 'a' 'b' \r\n",
        ),
        (b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\0v\r\n", b"+OK\r\n"),
        (b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$3\r\nv\0v\r\n"),
        (b"*2\r\n$4\r\nINCR\r\n$1\r\nk\r\n", b"-ERR value is not an integer or out of range\r\n"),
        (b"*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n", b":1\r\n"),
        (b"*3\r\n$6\r\nINCRBY\r\n$1\r\nn\r\n$2\r\n41\r\n", b":42\r\n"),
        (
            b"*3\r\n$6\r\nDECRBY\r\n$1\r\nn\r\n$3\r\nabc\r\n",
            b"-ERR value is not an integer or out of range\r\n",
        ),
        (b"*4\r\n$3\r\nDEL\r\n$1\r\nk\r\n$1\r\nk\r\n$4\r\nnone\r\n", b":1\r\n"),
        (b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", b"$-1\r\n"),
        (b"*5\r\n$4\r\nMSET\r\n$1\r\na\r\n$1\r\n1\r\n$1\r\nb\r\n$1\r\n2\r\n", b"+OK\r\n"),
        (
            b"*4\r\n$4\r\nMGET\r\n$1\r\na\r\n$1\r\nx\r\n$1\r\nb\r\n",
            b"*3\r\n$1\r\n1\r\n$-1\r\n$1\r\n2\r\n",
        ),
        (b"*4\r\n$6\r\nEXISTS\r\n$1\r\na\r\n$1\r\na\r\n$1\r\nx\r\n", b":2\r\n"),
        (
            b"*2\r\n$4\r\nMSET\r\n$1\r\na\r\n",
            b"-ERR wrong number of arguments for 'mset' command\r\n",
        ),
        (
            b"*2\r\n$7\r\nCOMMAND\r\n$4\r\nDOCS\r\n",
            b"-ERR Unknown subcommand or wrong number of arguments for 'DOCS'. Try COMMAND HELP.\r\n",
        ),
        (b"*3\r\n$7\r\nCOMMAND\r\n$4\r\nINFO\r\n$4\r\nnone\r\n", b"*1\r\n$-1\r\n"),
        (b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$4\r\nsave\r\n", b"*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
    ];
    for (req, want) in cases {
        exchange(&mut s, req, want);
    }
}

#[test]
fn a_pipeline_is_answered_in_order_with_reads_after_the_writes_before_them() {
    let c = Cluster::start(3);
    let leader = c.leader(1).unwrap();
    let follower = (1..=3).find(|i| *i != leader).unwrap();
    let mut s = raw(&c, follower);
    let mut req = Vec::new();
    let mut want = Vec::new();
    for i in 0..200 {
        req.extend_from_slice(
            format!("*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n${}\r\n{i}\r\n", i.to_string().len())
                .as_bytes(),
        );
        req.extend_from_slice(b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n");
        want.extend_from_slice(b"+OK\r\n");
        want.extend_from_slice(format!("${}\r\n{i}\r\n", i.to_string().len()).as_bytes());
    }
    // One TCP write for the whole pipeline.
    exchange(&mut s, &req, &want);
}

#[test]
fn malformed_or_oversized_requests_get_an_error_and_the_server_survives() {
    let c = Cluster::start_with(3, &["--max-bulk-bytes", "1048576"]);
    let cases: &[(&[u8], &[u8])] = &[
        (b"*1\r\n$99999999999\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*2\r\n$3\r\nGET\r\n$1048577\r\n", b"-ERR Protocol error: invalid bulk length\r\n"),
        (b"*-5x\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*3000000000\r\n", b"-ERR Protocol error: invalid multibulk length\r\n"),
        (b"*1\r\n+PING\r\n", b"-ERR Protocol error: expected '$', got '+'\r\n"),
        (b"*1\r\n*1\r\n*1\r\n", b"-ERR Protocol error: expected '$', got '*'\r\n"),
        (b"SET \"unterminated\r\n", b"-ERR Protocol error: unbalanced quotes in request\r\n"),
    ];
    for (req, want) in cases {
        let mut s = raw(&c, 1);
        exchange(&mut s, req, want);
        assert_closed(&mut s);
    }
    // An inline line longer than Redis's 64 KiB limit, never terminated.
    let mut s = raw(&c, 1);
    let _ = s.write_all(&vec![b'a'; 70 * 1024]);
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        String::from_utf8_lossy(&got).starts_with("-ERR Protocol error: too big inline request"),
        "{got:?}"
    );
    // Garbage bytes of every value.
    let mut s = raw(&c, 3);
    let junk: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let _ = s.write_all(&junk);
    // Every node still serves.
    for id in 1..=3 {
        exchange(&mut raw(&c, id), b"PING\r\n", b"+PONG\r\n");
    }
    // A large value within the limit round-trips through Raft.
    let mut con = c.conn(2);
    let big = vec![7u8; 1 << 20];
    let _: () = redis::cmd("SET").arg("big").arg(&big).query(&mut con).unwrap();
    let back: Vec<u8> = redis::cmd("GET").arg("big").query(&mut c.conn(3)).unwrap();
    assert_eq!(back, big);
}

/// Reads until `buf` ends with `end`.
fn read_until_ends_with(s: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    while !got.ends_with(end) {
        let n = s.read(&mut b).unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&b[..n]);
    }
    got
}

#[test]
fn hello_3_switches_the_connection_to_resp3_replies_as_redis_7_sends_them() {
    let c = Cluster::start(3);
    let mut s = raw(&c, 2);
    s.write_all(b"HELLO 3\r\n").unwrap();
    let hello = read_until_ends_with(&mut s, b"$7\r\nmodules\r\n*0\r\n");
    let hello = String::from_utf8_lossy(&hello);
    assert!(hello.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"), "{hello:?}");
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n$2\r\nid\r\n:"), "{hello:?}");
    // Bytes as redis-server 7.0.15 sends them after HELLO 3.
    let cases: &[(&[u8], &[u8])] = &[
        (b"HSET r3 f v\r\n", b":1\r\n"),
        (b"HGETALL r3\r\n", b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"),
        (b"GET missing\r\n", b"_\r\n"),
        (b"CONFIG GET save\r\n", b"%1\r\n$4\r\nsave\r\n$0\r\n\r\n"),
        (b"HMGET r3 f x\r\n", b"*2\r\n$1\r\nv\r\n_\r\n"),
        (b"MULTI\r\n", b"+OK\r\n"),
        (b"EXEC\r\n", b"*0\r\n"),
    ];
    for (req, want) in cases {
        exchange(&mut s, req, want);
    }
    s.write_all(b"HELLO 2\r\n").unwrap();
    let hello = read_until_ends_with(&mut s, b"$7\r\nmodules\r\n*0\r\n");
    assert!(hello.starts_with(b"*14\r\n"), "{:?}", String::from_utf8_lossy(&hello));
    exchange(&mut s, b"GET missing\r\n", b"$-1\r\n");
}

#[test]
fn with_requirepass_only_auth_hello_quit_and_reset_work_before_authenticating() {
    let c = Cluster::start_with(3, &["--requirepass", "s3cret"]);
    let mut s = raw(&c, 1);
    let noauth: &[u8] = b"-NOAUTH Authentication required.\r\n";
    exchange(&mut s, b"GET k\r\n", noauth);
    exchange(&mut s, b"PING\r\n", noauth);
    exchange(&mut s, b"MULTI\r\n", noauth);
    exchange(
        &mut s,
        b"AUTH wrong\r\n",
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    exchange(
        &mut s,
        b"AUTH someone s3cret\r\n",
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n",
    );
    exchange(&mut s, b"AUTH s3cret\r\n", b"+OK\r\n");
    exchange(&mut s, b"SET k v\r\n", b"+OK\r\n");
    exchange(&mut s, b"RESET\r\n", b"+RESET\r\n");
    exchange(&mut s, b"GET k\r\n", noauth);
    exchange(&mut s, b"AUTH default s3cret\r\n", b"+OK\r\n");
    exchange(&mut s, b"GET k\r\n", b"$1\r\nv\r\n");
    // HELLO authenticates and picks the protocol at once.
    let mut s = raw(&c, 2);
    s.write_all(b"HELLO 3 AUTH default s3cret SETNAME app\r\n").unwrap();
    read_until_ends_with(&mut s, b"$7\r\nmodules\r\n*0\r\n");
    exchange(&mut s, b"CLIENT GETNAME\r\n", b"$3\r\napp\r\n");
    exchange(&mut s, b"GET nothing\r\n", b"_\r\n");
    // The redis crate authenticates from the URL.
    let v: String = redis::cmd("GET").arg("k").query(&mut c.conn(3)).unwrap();
    assert_eq!(v, "v");
}
