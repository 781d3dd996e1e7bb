//! Fuzzing of everything a peer or a client can send: the RESP front end (framing, then the
//! command parser) and the peer codec, with arbitrary bytes and with valid inputs cut and
//! mutated. Nothing may panic; a valid input parses back exactly, a bad one is an error.
//! FUZZ_CASES sets the cases per property (default 200,000: a million inputs in all).

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use raft_kv_core::{Entry, LogIndex, Message, MessageBody, NodeId, Term};
use raft_kv_runtime::codec::{self, Hello, PeerFrame};
use raft_kv_runtime::command::{self, commands};
use raft_kv_runtime::resp::{next_request, RequestLimits};

fn runner() -> TestRunner {
    let cases = std::env::var("FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(200_000);
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

/// Small limits, so that small inputs reach the limit checks too.
const LIMITS: RequestLimits =
    RequestLimits { bulk_bytes_max: 64, request_bytes_max: 256, args_max: 16 };

/// Every request `buf` holds, until it needs more bytes, and whether a protocol error then
/// closed the connection (as the client loop does). Each request taken shrinks the buffer.
fn drain(buf: &mut BytesMut) -> (Vec<Vec<Bytes>>, bool) {
    let mut out = Vec::new();
    loop {
        let before = buf.len();
        match next_request(buf, &LIMITS) {
            Ok(Some(argv)) => {
                assert!(buf.len() < before, "a request was taken without consuming input");
                out.push(argv);
            }
            Ok(None) => return (out, false),
            Err(e) => {
                assert!(e.0.starts_with("ERR Protocol error: "), "{}", e.0);
                return (out, true);
            }
        }
    }
}

fn encode(argv: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", argv.len()).into_bytes();
    for a in argv {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Requests within `LIMITS`: 1-5 arguments of up to 24 bytes.
fn argv_strategy() -> impl Strategy<Value = Vec<Vec<u8>>> {
    prop::collection::vec(prop::collection::vec(any::<u8>(), 0..24), 1..6)
}

#[test]
fn arbitrary_bytes_never_panic_the_resp_parser() {
    // Bytes biased towards RESP's own: '*', '$', digits, CR, LF, quotes, backslashes.
    let byte = prop_oneof![any::<u8>(), prop::sample::select(b"*$-0123456789\r\n\"' \\x".to_vec())];
    runner()
        .run(&prop::collection::vec(byte, 0..200), |bytes| {
            let mut buf = BytesMut::from(&bytes[..]);
            drain(&mut buf);
            Ok(())
        })
        .unwrap();
}

#[test]
fn valid_requests_cut_anywhere_parse_back_whole_and_in_order() {
    let reqs = prop::collection::vec(argv_strategy(), 1..4);
    let cuts = prop::collection::vec(any::<prop::sample::Index>(), 0..6);
    runner()
        .run(&(reqs, cuts), |(reqs, cuts)| {
            let wire: Vec<u8> = reqs.iter().flat_map(|r| encode(r)).collect();
            let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(wire.len() + 1)).collect();
            cuts.sort_unstable();
            cuts.push(wire.len());
            let (mut buf, mut got, mut from) = (BytesMut::new(), Vec::new(), 0);
            for to in cuts {
                buf.extend_from_slice(&wire[from..to]);
                from = to;
                let (taken, failed) = drain(&mut buf);
                prop_assert!(!failed, "a valid request was refused");
                got.extend(taken);
            }
            prop_assert!(buf.is_empty());
            let got: Vec<Vec<Vec<u8>>> =
                got.into_iter().map(|r| r.into_iter().map(|a| a.to_vec()).collect()).collect();
            prop_assert_eq!(got, reqs);
            Ok(())
        })
        .unwrap();
}

#[test]
fn valid_requests_mutated_never_panic_and_what_parses_is_within_the_limits() {
    let edit = (any::<prop::sample::Index>(), any::<u8>(), 0..3u8);
    runner()
        .run(&(argv_strategy(), prop::collection::vec(edit, 1..4)), |(argv, edits)| {
            let mut wire = encode(&argv);
            for (at, byte, kind) in edits {
                if wire.is_empty() {
                    break;
                }
                let i = at.index(wire.len());
                match kind {
                    0 => wire[i] = byte,
                    1 => wire.insert(i, byte),
                    _ => wire.truncate(i),
                }
            }
            let mut buf = BytesMut::from(&wire[..]);
            let (taken, _) = drain(&mut buf);
            // A multibulk request that parsed is within the limits (an inline one, which is
            // what the bytes after it may read as, is bounded by its 64 KiB line instead).
            if wire.first() == Some(&b'*') {
                if let Some(r) = taken.first() {
                    prop_assert!(r.len() <= LIMITS.args_max);
                    prop_assert!(r.iter().all(|a| a.len() <= LIMITS.bulk_bytes_max));
                    prop_assert!(
                        r.iter().map(Bytes::len).sum::<usize>() <= LIMITS.request_bytes_max
                    );
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn every_command_with_arbitrary_arguments_is_parsed_or_refused_without_panicking() {
    // Arguments biased towards what commands look for: numbers, options, patterns.
    let arg = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..12).prop_map(Bytes::from),
        prop::sample::select(vec![
            "0",
            "-1",
            "1",
            "9223372036854775807",
            "-9223372036854775808",
            "99999999999999999999",
            "1.5",
            "inf",
            "-inf",
            "nan",
            "EX",
            "PX",
            "EXAT",
            "PXAT",
            "NX",
            "XX",
            "GET",
            "KEEPTTL",
            "MATCH",
            "COUNT",
            "TYPE",
            "*",
            "?",
            "[",
            "\\",
            "WITHVALUES",
            "LEFT",
            "right",
            "COUNT",
            "RANK",
            "MAXLEN",
            "before",
            "WITHSCORES",
            "BYSCORE",
            "bylex",
            "REV",
            "LIMIT",
            "(1",
            "[a",
            "+inf",
            "NX",
            "incr",
            "WEIGHTS",
            "AGGREGATE",
            "",
            "string",
            "hash",
        ])
        .prop_map(|s: &'static str| Bytes::from_static(s.as_bytes())),
    ];
    let names: Vec<&'static str> = commands().map(|(n, _)| *n).collect();
    let argv = (prop::sample::select(names), prop::collection::vec(arg, 0..7));
    runner()
        .run(&argv, |(name, args)| {
            let mut argv = vec![Bytes::from(name.to_ascii_uppercase())];
            argv.extend(args);
            let _ = command::parse(argv);
            Ok(())
        })
        .unwrap();
}

fn sample_frames() -> Vec<Vec<u8>> {
    let m = |body| Message { from: NodeId(1), to: NodeId(2), term: Term(3), body };
    let entry = |i: u64| {
        let mut e = Entry::new(LogIndex(i), Term(3), vec![i as u8; i as usize]);
        e.time = 1_700_000_000_000 + i;
        e
    };
    [
        PeerFrame::Hello(Hello {
            cluster_id: 7,
            from: NodeId(1),
            addr: Some("10.0.0.1:7000".into()),
        }),
        PeerFrame::Raft(m(MessageBody::Heartbeat { commit: LogIndex(4), read_round: 9 })),
        PeerFrame::Raft(m(MessageBody::AppendEntries {
            prev_log_index: LogIndex(2),
            prev_log_term: Term(2),
            entries: vec![entry(3), entry(4)],
            leader_commit: LogIndex(2),
        })),
        PeerFrame::Raft(m(MessageBody::Propose {
            proposals: vec![(1, b"a".to_vec()), (2, vec![0; 40])],
        })),
        PeerFrame::Raft(m(MessageBody::ReadIndex { ids: vec![1, 2, u64::MAX] })),
    ]
    .iter()
    .map(codec::encode)
    .collect()
}

#[test]
fn peer_frames_arbitrary_or_mutated_decode_or_fail_without_panicking() {
    let frames = sample_frames();
    for f in &frames {
        assert!(codec::decode::<PeerFrame>(f).is_ok(), "the samples decode");
    }
    let edit = (any::<prop::sample::Index>(), any::<u8>(), 0..3u8);
    let mutated = (prop::sample::select(frames), prop::collection::vec(edit, 1..4)).prop_map(
        |(mut wire, edits)| {
            for (at, byte, kind) in edits {
                let i = at.index(wire.len());
                match kind {
                    0 => wire[i] = byte,
                    1 => wire.insert(i, byte),
                    _ => wire.truncate(i.max(1)),
                }
            }
            wire
        },
    );
    let arbitrary = prop::collection::vec(any::<u8>(), 0..120).prop_map(|mut b| {
        // Mostly the right version byte, so the decoder goes past it.
        if let Some(first) = b.first_mut() {
            *first = if *first < 230 { codec::FORMAT_VERSION } else { *first };
        }
        b
    });
    runner()
        .run(&prop_oneof![mutated, arbitrary], |wire| {
            let _ = codec::decode::<PeerFrame>(&wire);
            Ok(())
        })
        .unwrap();
}
