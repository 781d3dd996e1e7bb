//! Blocking pops on a real cluster: the node a client talks to holds the wait, the pop goes
//! through the log, so a push through any node wakes it, two waiters never get the same
//! element, and a leader killed meanwhile neither loses nor duplicates one.

mod common;

use common::{wait_until, Cluster};
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn follower(c: &Cluster) -> usize {
    let leader = c.leader(1).expect("a leader");
    (1..=3).find(|i| *i != leader).expect("three nodes")
}

#[test]
fn a_pop_blocked_on_a_follower_is_served_by_a_push_through_another_node() {
    let c = Cluster::start(3);
    let f = follower(&c);
    let other = (1..=3).find(|i| *i != f).unwrap();
    let mut waiter = c.conn(f);
    let blocked = std::thread::spawn(move || {
        let start = Instant::now();
        let got: Option<(String, String)> =
            redis::cmd("BLPOP").arg("q").arg(10).query(&mut waiter).unwrap();
        (got, start.elapsed())
    });
    std::thread::sleep(Duration::from_millis(500));
    let info: String = redis::cmd("INFO").arg("clients").query(&mut c.conn(f)).unwrap();
    assert!(info.contains("blocked_clients:1\r\n"), "{info}");
    let _: i64 = redis::cmd("RPUSH").arg("q").arg("x").query(&mut c.conn(other)).unwrap();
    let (got, took) = blocked.join().unwrap();
    assert_eq!(got, Some(("q".into(), "x".into())));
    assert!(took >= Duration::from_millis(400), "it waited for the push: {took:?}");
    let len: i64 = redis::cmd("LLEN").arg("q").query(&mut c.conn(other)).unwrap();
    assert_eq!(len, 0);
}

#[test]
fn two_blocked_clients_each_get_a_different_element_and_a_timeout_answers_nil() {
    let c = Cluster::start(3);
    let mut waiters = Vec::new();
    for id in [1, 2] {
        let mut con = c.conn(id);
        waiters.push(std::thread::spawn(move || {
            let got: Option<(String, String)> =
                redis::cmd("BRPOP").arg("q2").arg("other").arg(10).query(&mut con).unwrap();
            got.expect("an element").1
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let _: i64 = redis::cmd("LPUSH").arg("q2").arg("a").arg("b").query(&mut c.conn(3)).unwrap();
    let got: BTreeSet<String> = waiters.into_iter().map(|w| w.join().unwrap()).collect();
    assert_eq!(got, BTreeSet::from(["a".to_string(), "b".to_string()]));
    // Nothing comes: a null array after the timeout.
    let start = Instant::now();
    let got: Option<(String, String)> =
        redis::cmd("BLPOP").arg("empty").arg(0.3).query(&mut c.conn(1)).unwrap();
    assert_eq!(got, None);
    assert!(start.elapsed() >= Duration::from_millis(300), "{:?}", start.elapsed());
    // A sorted set, and BLMOVE.
    let mut con = c.conn(2);
    let mut zcon = c.conn(1);
    let z = std::thread::spawn(move || {
        let got: Vec<String> = redis::cmd("BZPOPMIN").arg("z").arg(10).query(&mut zcon).unwrap();
        got
    });
    std::thread::sleep(Duration::from_millis(300));
    let _: i64 =
        redis::cmd("ZADD").arg("z").arg(2).arg("b").arg(1).arg("a").query(&mut con).unwrap();
    assert_eq!(z.join().unwrap(), vec!["z", "a", "1"]);
    let mut mcon = c.conn(3);
    let m = std::thread::spawn(move || {
        let got: Option<String> = redis::cmd("BLMOVE")
            .arg("src")
            .arg("dst")
            .arg("LEFT")
            .arg("RIGHT")
            .arg(10)
            .query(&mut mcon)
            .unwrap();
        got
    });
    std::thread::sleep(Duration::from_millis(300));
    let _: i64 = redis::cmd("RPUSH").arg("src").arg("moved").query(&mut con).unwrap();
    assert_eq!(m.join().unwrap().as_deref(), Some("moved"));
    let dst: Vec<String> = redis::cmd("LRANGE").arg("dst").arg(0).arg(-1).query(&mut con).unwrap();
    assert_eq!(dst, vec!["moved"]);
}

/// Sends raw RESP and reads until `want` bytes arrived (or 10 s passed).
fn raw(port: u16, send: &[u8], want: usize) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(send).unwrap();
    let mut got = Vec::new();
    let mut chunk = [0u8; 256];
    while got.len() < want {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
        }
    }
    got
}

#[test]
fn commands_after_a_blocking_pop_wait_for_it_and_a_client_that_leaves_takes_nothing() {
    let c = Cluster::start(3);
    let port = c.redis_ports[0];
    // The push after the BLPOP on the same connection runs only once the BLPOP timed out,
    // as in Redis: the BLPOP answers nil, the push 1.
    let got = raw(port, b"BLPOP pq 0.3\r\nRPUSH pq x\r\n", 9);
    assert_eq!(got, b"*-1\r\n:1\r\n");
    // A client blocks, then leaves: a later push stays in the list.
    {
        let mut s = TcpStream::connect(("127.0.0.1", c.redis_ports[1])).unwrap();
        s.write_all(b"BLPOP gone 0\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut con = c.conn(3);
    let _: i64 = redis::cmd("RPUSH").arg("gone").arg("kept").query(&mut con).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let len: i64 = redis::cmd("LLEN").arg("gone").query(&mut con).unwrap();
    assert_eq!(len, 1, "the element went to a client that had left");
    // Inside MULTI a blocking pop does not block.
    let got = raw(port, b"MULTI\r\nBLPOP none 0\r\nEXEC\r\n", 23);
    assert_eq!(got, b"+OK\r\n+QUEUED\r\n*1\r\n*-1\r\n");
    let got = raw(port, b"BLPOP k -1\r\nBLPOP k x\r\n", 10);
    assert_eq!(
        String::from_utf8_lossy(&got),
        "-ERR timeout is negative\r\n-ERR timeout is not a float or out of range\r\n"
    );
}

#[test]
fn a_leader_killed_while_clients_block_loses_and_duplicates_no_element() {
    const N: usize = 200;
    let mut c = Cluster::start(3);
    let f = follower(&c);
    let poppers: Vec<_> = (0..2)
        .map(|_| {
            let mut con = c.conn(f);
            std::thread::spawn(move || {
                let (mut got, mut unsure) = (Vec::new(), 0);
                let deadline = Instant::now() + Duration::from_secs(60);
                while Instant::now() < deadline {
                    let r: redis::RedisResult<Option<(String, String)>> =
                        redis::cmd("BLPOP").arg("jobs").arg(2).query(&mut con);
                    match r {
                        Ok(Some((_, v))) if v == "stop" => break,
                        Ok(Some((_, v))) => got.push(v),
                        Ok(None) => {}
                        // Answered "may or may not have been applied": an element may be gone.
                        Err(_) => unsure += 1,
                    }
                }
                (got, unsure)
            })
        })
        .collect();
    let pusher_node = (1..=3).find(|i| *i != f).unwrap();
    let mut pushed = Vec::new();
    let mut unsure_pushes = 0;
    let leader = c.leader(f).expect("a leader");
    for i in 0..N {
        if i == N / 2 {
            c.kill(leader);
        }
        let v = format!("job{i}");
        let target = if c.running().contains(&pusher_node) { pusher_node } else { f };
        let ok = wait_until(Duration::from_secs(10), || {
            let mut con = c.try_conn(target)?;
            let r: redis::RedisResult<i64> =
                redis::cmd("RPUSH").arg("jobs").arg(&v).query(&mut con);
            match r {
                Ok(_) => Some(true),
                Err(e) if e.to_string().contains("may or may not") => Some(false),
                Err(_) => None,
            }
        });
        match ok {
            Some(true) => pushed.push(v),
            _ => unsure_pushes += 1,
        }
    }
    let mut con = c.conn(f);
    for _ in 0..2 {
        let _: i64 = redis::cmd("RPUSH").arg("jobs").arg("stop").query(&mut con).unwrap();
    }
    let mut popped = Vec::new();
    let mut unsure_pops = 0;
    for p in poppers {
        let (got, unsure) = p.join().unwrap();
        popped.extend(got);
        unsure_pops += unsure;
    }
    let left: Vec<String> =
        redis::cmd("LRANGE").arg("jobs").arg(0).arg(-1).query(&mut con).unwrap();
    let mut seen = BTreeSet::new();
    for v in popped.iter().chain(left.iter().filter(|v| *v != "stop")) {
        assert!(seen.insert(v.clone()), "{v} popped or left twice");
    }
    let missing: Vec<&String> = pushed.iter().filter(|v| !seen.contains(*v)).collect();
    assert!(
        missing.len() <= unsure_pops,
        "{} acknowledged pushes lost ({missing:?}) with only {unsure_pops} pops unanswered",
        missing.len()
    );
    eprintln!(
        "pushed {} ({unsure_pushes} unsure), popped {}, left {}, unsure pops {unsure_pops}",
        pushed.len(),
        popped.len(),
        left.len()
    );
    assert!(popped.len() >= N / 2, "the poppers got only {}", popped.len());
}

#[test]
fn a_waiter_woken_by_a_key_of_another_type_waits_on_as_in_redis() {
    let c = Cluster::start(3);
    let mut waiter = c.conn(1);
    let blocked = std::thread::spawn(move || {
        let got: Option<(String, String)> =
            redis::cmd("BLPOP").arg("wk").arg(10).query(&mut waiter).unwrap();
        got
    });
    std::thread::sleep(Duration::from_millis(400));
    let mut con = c.conn(2);
    // The list appears and is replaced by a string in one transaction: nothing to pop, and no
    // WRONGTYPE either (Redis serves a blocked client only from a key of its type).
    let _: () = redis::cmd("MULTI").query(&mut con).unwrap();
    for cmd in [&["RPUSH", "wk", "x"][..], &["DEL", "wk"], &["SET", "wk", "s"]] {
        let _: String = redis::cmd(cmd[0]).arg(&cmd[1..]).query(&mut con).unwrap();
    }
    let _: redis::Value = redis::cmd("EXEC").query(&mut con).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _: i64 = redis::cmd("DEL").arg("wk").query(&mut con).unwrap();
    let _: i64 = redis::cmd("RPUSH").arg("wk").arg("y").query(&mut con).unwrap();
    assert_eq!(blocked.join().unwrap(), Some(("wk".into(), "y".into())));
}

#[test]
fn a_woken_move_refused_by_its_destination_passes_the_element_to_the_next_waiter() {
    let c = Cluster::start(3);
    let mut con = c.conn(1);
    let _: () = redis::cmd("SET").arg("nolist").arg("x").query(&mut con).unwrap();
    let spawn = |dest: &'static str| {
        let mut waiter = c.conn(1);
        std::thread::spawn(move || {
            let got: redis::RedisResult<Option<String>> =
                redis::cmd("BRPOPLPUSH").arg("src").arg(dest).arg(10).query(&mut waiter);
            got.map_err(|e| e.to_string())
        })
    };
    let blocked = |n: usize| {
        let mut con = c.conn(1);
        wait_until(Duration::from_secs(5), move || {
            let info: String = redis::cmd("INFO").arg("clients").query(&mut con).unwrap();
            info.contains(&format!("blocked_clients:{n}\r\n")).then_some(())
        })
        .expect("the waiters blocked")
    };
    // The first waiter's destination is a string: woken by the push, it is refused, and the
    // element it left goes to the second waiter, as Redis serves its next blocked client.
    let first = spawn("nolist");
    blocked(1);
    let second = spawn("dest");
    blocked(2);
    let _: i64 = redis::cmd("LPUSH").arg("src").arg("foo").query(&mut c.conn(2)).unwrap();
    let refused = first.join().unwrap().expect_err("WRONGTYPE");
    assert!(refused.contains("WRONGTYPE"), "{refused}");
    assert_eq!(second.join().unwrap(), Ok(Some("foo".to_string())));
    let dest: Vec<String> =
        redis::cmd("LRANGE").arg("dest").arg(0).arg(-1).query(&mut con).unwrap();
    assert_eq!(dest, vec!["foo"]);
}

#[test]
fn client_unblock_answers_a_waiting_pop_as_a_timeout_or_an_error() {
    let c = Cluster::start(3);
    for (reason, want) in
        [("TIMEOUT", "nil"), ("ERROR", "UNBLOCKED: client unblocked via CLIENT UNBLOCK")]
    {
        let mut waiter = c.conn(2);
        let id: i64 = redis::cmd("CLIENT").arg("ID").query(&mut waiter).unwrap();
        let blocked = std::thread::spawn(move || {
            let got: redis::RedisResult<Option<(String, String)>> =
                redis::cmd("BLPOP").arg("ub").arg(0).query(&mut waiter);
            match got {
                Ok(None) => "nil".to_string(),
                Ok(Some(v)) => format!("{v:?}"),
                Err(e) => e.to_string(),
            }
        });
        let mut con = c.conn(2);
        let n = wait_until(Duration::from_secs(5), || {
            let n: i64 =
                redis::cmd("CLIENT").arg("UNBLOCK").arg(id).arg(reason).query(&mut con).unwrap();
            (n == 1).then_some(n)
        });
        assert_eq!(n, Some(1), "{reason}");
        let got = blocked.join().unwrap();
        assert!(got.contains(want), "{reason}: {got}");
        // Nothing waits any more, and a push afterwards stays in the list.
        let n: i64 = redis::cmd("CLIENT").arg("UNBLOCK").arg(id).query(&mut con).unwrap();
        assert_eq!(n, 0);
        let _: i64 = redis::cmd("RPUSH").arg("ub").arg("x").query(&mut con).unwrap();
        let len: i64 = redis::cmd("LLEN").arg("ub").query(&mut con).unwrap();
        assert_eq!(len, 1);
        let _: i64 = redis::cmd("DEL").arg("ub").query(&mut con).unwrap();
    }
}

#[test]
fn chained_moves_settle_with_no_waiter_left_behind() {
    let c = Cluster::start(3);
    let f = follower(&c);
    let mut con = c.conn(f);
    let info = |con: &mut redis::Connection| -> String {
        redis::cmd("INFO").arg("clients").query(con).unwrap()
    };
    let blocked = |con: &mut redis::Connection, n: usize| {
        wait_until(Duration::from_secs(5), || {
            info(con).contains(&format!("blocked_clients:{n}\r\n")).then_some(())
        })
        .unwrap_or_else(|| panic!("blocked_clients never {n}: {}", info(con)));
    };
    let range = |con: &mut redis::Connection, k: &str| -> Vec<String> {
        redis::cmd("LRANGE").arg(k).arg(0).arg(-1).query(con).unwrap()
    };
    for round in 0..5 {
        // Linked: l1 -> l2 -> l3. Circular: c1 -> c2 -> c1.
        for (from, to, last) in [("l1", "l2", "l3"), ("c1", "c2", "c1")] {
            let mut waiters = Vec::new();
            for (src, dst) in [(from, to), (to, last)] {
                let mut w = c.conn(f);
                let n = waiters.len() + 1;
                waiters.push(std::thread::spawn(move || {
                    let got: Option<String> = redis::cmd("BLMOVE")
                        .arg(src)
                        .arg(dst)
                        .arg("RIGHT")
                        .arg("LEFT")
                        .arg(10)
                        .query(&mut w)
                        .unwrap();
                    got
                }));
                blocked(&mut con, n);
            }
            let _: i64 = redis::cmd("RPUSH").arg(from).arg("foo").query(&mut c.conn(f)).unwrap();
            for w in waiters {
                assert_eq!(w.join().unwrap().as_deref(), Some("foo"), "round {round} {from}");
            }
            blocked(&mut con, 0);
            assert_eq!(range(&mut con, last), vec!["foo"], "round {round} {from}");
            let _: i64 = redis::cmd("DEL").arg(last).query(&mut con).unwrap();
        }
    }
}
