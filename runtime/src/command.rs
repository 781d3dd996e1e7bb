//! Client commands: parsing RESP arguments into requests with Redis 7's exact error replies,
//! and the reply type the node produces. Pure functions; no I/O.

use bytes::Bytes;
use raft_kv_core::kv::{
    parse_f64, parse_i64, Command, ExpireCond, Expiry, Query, SetCond, WriteReply, ERR_NOT_INTEGER,
};

/// A reply in Redis terms; turned into RESP bytes in `resp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(&'static str),
    Status(String),
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Reply>),
    /// A set in RESP3, an array in RESP2.
    Set(Vec<Reply>),
    /// A double (by its bits) in RESP3, its `%.17g` text as a bulk string in RESP2.
    Double(u64),
    /// A map in RESP3, a flat array of keys and values in RESP2.
    Map(Vec<(Reply, Reply)>),
    /// An array of two-element arrays in RESP3, a flat array in RESP2 (pairs that may repeat,
    /// so not a map: HRANDFIELD ... WITHVALUES).
    Pairs(Vec<(Reply, Reply)>),
    /// `*-1`: EXEC aborted by WATCH.
    NullArray,
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK")
    }

    /// About the bytes it takes on the wire, for output limits.
    pub fn size_bytes(&self) -> usize {
        match self {
            Reply::Simple(s) => s.len() + 3,
            Reply::Status(s) | Reply::Error(s) => s.len() + 3,
            Reply::Bulk(b) => b.len() + 16,
            Reply::Integer(_) | Reply::Null | Reply::NullArray => 16,
            Reply::Double(_) => 32,
            Reply::Array(items) | Reply::Set(items) => {
                16 + items.iter().map(Reply::size_bytes).sum::<usize>()
            }
            Reply::Map(pairs) | Reply::Pairs(pairs) => {
                16 + pairs.iter().map(|(k, v)| k.size_bytes() + v.size_bytes()).sum::<usize>()
            }
        }
    }

    pub fn error(msg: impl Into<String>) -> Reply {
        Reply::Error(msg.into())
    }
}

impl From<Reply> for WriteReply {
    fn from(r: Reply) -> WriteReply {
        match r {
            Reply::Simple("OK") => WriteReply::Ok,
            Reply::Simple(s) => WriteReply::Status(s.to_string()),
            Reply::Status(s) => WriteReply::Status(s),
            Reply::Error(e) => WriteReply::Error(e),
            Reply::Integer(n) => WriteReply::Integer(n),
            Reply::Bulk(b) => WriteReply::Bulk(b.to_vec()),
            Reply::Null => WriteReply::Null,
            Reply::Array(items) => WriteReply::Array(items.into_iter().map(Into::into).collect()),
            Reply::Set(items) => WriteReply::Set(items.into_iter().map(Into::into).collect()),
            Reply::NullArray => WriteReply::NullArray,
            Reply::Map(pairs) => {
                WriteReply::Map(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
            }
            Reply::Pairs(pairs) => {
                WriteReply::Pairs(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
            }
            Reply::Double(bits) => WriteReply::Double(bits),
        }
    }
}

impl From<WriteReply> for Reply {
    fn from(r: WriteReply) -> Reply {
        match r {
            WriteReply::Ok => Reply::ok(),
            WriteReply::Status(s) => Reply::Status(s),
            WriteReply::Integer(n) => Reply::Integer(n),
            WriteReply::Bulk(b) => Reply::Bulk(Bytes::from(b)),
            WriteReply::Null => Reply::Null,
            WriteReply::Array(items) => Reply::Array(items.into_iter().map(Reply::from).collect()),
            WriteReply::Set(items) => Reply::Set(items.into_iter().map(Reply::from).collect()),
            WriteReply::Double(bits) => Reply::Double(bits),
            WriteReply::Pairs(pairs) => {
                Reply::Pairs(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
            }
            WriteReply::NullArray => Reply::NullArray,
            WriteReply::Map(pairs) => {
                Reply::Map(pairs.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
            }
            WriteReply::Error(e) => Reply::Error(e),
        }
    }
}

/// A read served from applied state once ReadIndex confirms it is current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadCommand {
    Query(Query),
    /// RAFT.BACKUP START: a backup of the state at this read's point (`RAFT.BACKUP NEXT`
    /// streams it).
    BackupStart,
    Keys(Bytes),
    DbSize,
    /// SCAN cursor [MATCH pattern] [COUNT n] [TYPE type].
    Scan {
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
        type_name: Option<String>,
    },
    RandomKey,
    /// HRANDFIELD key [count [WITHVALUES]]: chosen by this node's random generator (a read
    /// changes nothing, so nodes need not agree on the choice).
    HRandField {
        key: Vec<u8>,
        count: Option<i64>,
        with_values: bool,
    },
    /// SRANDMEMBER key [count]: chosen by this node's random generator, like HRANDFIELD.
    SRandMember {
        key: Vec<u8>,
        count: Option<i64>,
    },
    /// ZRANDMEMBER key [count [WITHSCORES]]: like HRANDFIELD.
    ZRandMember {
        key: Vec<u8>,
        count: Option<i64>,
        with_scores: bool,
    },
    /// HSCAN, SSCAN, ZSCAN key cursor [MATCH pattern] [COUNT n]: a small collection whole with
    /// cursor 0 (as Redis answers one it keeps compact), a larger one `count` elements at a time
    /// under a node-local cursor, as SCAN.
    ElementScan {
        key: Vec<u8>,
        kind: raft_kv_core::kv::Kind,
        cursor: u64,
        pattern: Option<Bytes>,
        count: usize,
    },
    /// OBJECT ENCODING|REFCOUNT|IDLETIME|FREQ key.
    Object {
        sub: ObjectSub,
        key: Vec<u8>,
    },
    /// MEMORY USAGE key: an estimate of the bytes the key and its value take.
    MemoryUsage(Vec<u8>),
}

/// OBJECT's subcommands about a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ObjectSub {
    /// What Redis 7.0 would use for the value's size (its CONFIG thresholds on this node).
    Encoding,
    /// 1: values are not shared.
    RefCount,
    /// 0: access times are not tracked.
    IdleTime,
    /// Refused, as Redis refuses it without an LFU policy.
    Freq,
}

/// Introspection answered by the node without consensus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// INFO [section ...], the names lowercased; none: every section.
    Info(Vec<String>),
    /// CONFIG GET pattern [pattern ...].
    ConfigGet(Vec<Bytes>),
    /// CONFIG SET name value [name value ...], the names lowercased.
    ConfigSet(Vec<(String, Bytes)>),
    /// RAFT.TRANSFER-LEADER <id>: hand leadership to node `id`; answered once it leads.
    TransferLeader(u64),
    /// RAFT.NODE ADD <id> <raft-addr>: a new learner, promoted once it caught up.
    NodeAdd { id: u64, addr: std::net::SocketAddr },
    /// RAFT.NODE REMOVE <id>.
    NodeRemove(u64),
    /// RAFT.BACKUP NEXT <id>: the next chunk of backup `id`, nil at its end.
    BackupNext(u64),
    /// RAFT.BACKUP ABORT <id>.
    BackupAbort(u64),
    /// CLIENT UNBLOCK: answers client `client`'s blocking pop that waits on this node (a null
    /// array, or with `error` the UNBLOCKED error); 1 if there was one, else 0.
    Unblock { client: u64, error: bool },
}

/// What a parsed client command asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Answered by the connection itself.
    Immediate(Reply),
    /// Answered, then the connection closes.
    Quit,
    Write(Command),
    /// A blocking pop (BLPOP, BZPOPMIN, BLMOVE, ...): the pop goes through the log; when there
    /// is nothing to pop the node holds the client until a write lets it pop or `timeout_ms`
    /// passes (0: no limit). The connection waits for it, as Redis's does.
    Blocking {
        command: Command,
        timeout_ms: u64,
    },
    Read(ReadCommand),
    Admin(AdminCommand),
    /// About the connection itself (its name, id), answered by it.
    Connection(ConnectionCommand),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionCommand {
    /// HELLO [protover [AUTH username password] [SETNAME name]].
    Hello {
        protocol: Option<u8>,
        auth: Option<(Bytes, Bytes)>,
        name: Option<Bytes>,
    },
    /// AUTH [username] password.
    Auth(Option<Bytes>, Bytes),
    Reset,
    Multi,
    Watch(Vec<Bytes>),
    Unwatch,
    Exec,
    Discard,
    Client(ClientCommand),
    /// SLOWLOG and LATENCY: answered from the node's `Metrics`.
    Monitor(MonitorCommand),
}

/// SLOWLOG's and LATENCY's subcommands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MonitorCommand {
    /// SLOWLOG GET [count]: -1 for all.
    SlowGet(i64),
    SlowLen,
    SlowReset,
    SlowHelp,
    LatencyLatest,
    /// LATENCY RESET [event ...]: none for all.
    LatencyReset(Vec<Bytes>),
    LatencyHistory(Bytes),
    LatencyDoctor,
    LatencyHelp,
}

/// CLIENT's subcommands about this connection and the node's others.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCommand {
    Id,
    GetName,
    /// Checked: no spaces, newlines or other special characters.
    SetName(Bytes),
    Info,
    List,
    /// CLIENT UNBLOCK <id> [TIMEOUT|ERROR]: `error` for ERROR.
    Unblock {
        id: u64,
        error: bool,
    },
}

/// Every command this build knows, with Redis's arity convention (negative: at least that many
/// arguments, command name included).
const CORE_COMMANDS: &[(&str, i32)] = &[
    ("ping", -1),
    ("echo", 2),
    ("get", 2),
    ("set", -3),
    ("setnx", 3),
    ("setex", 4),
    ("psetex", 4),
    ("getex", -2),
    ("expire", -3),
    ("pexpire", -3),
    ("expireat", -3),
    ("pexpireat", -3),
    ("persist", 2),
    ("ttl", 2),
    ("pttl", 2),
    ("expiretime", 2),
    ("pexpiretime", 2),
    ("getset", 3),
    ("getdel", 2),
    ("del", -2),
    ("unlink", -2),
    ("exists", -2),
    ("touch", -2),
    ("keys", 2),
    ("type", 2),
    ("dbsize", 1),
    ("scan", -2),
    ("hscan", -3),
    ("randomkey", 1),
    ("rename", 3),
    ("renamenx", 3),
    ("copy", -3),
    ("flushdb", -1),
    ("flushall", -1),
    ("hset", -4),
    ("hmset", -4),
    ("hsetnx", 4),
    ("hget", 3),
    ("hmget", -3),
    ("hdel", -3),
    ("hexists", 3),
    ("hlen", 2),
    ("hstrlen", 3),
    ("hgetall", 2),
    ("hrandfield", -2),
    ("hkeys", 2),
    ("hvals", 2),
    ("hincrby", 4),
    ("hincrbyfloat", 4),
    ("mget", -2),
    ("mset", -3),
    ("msetnx", -3),
    ("incr", 2),
    ("decr", 2),
    ("incrby", 3),
    ("decrby", 3),
    ("incrbyfloat", 3),
    ("append", 3),
    ("strlen", 2),
    ("getrange", 4),
    ("substr", 4),
    ("setrange", 4),
    ("command", -1),
    ("config", -2),
    ("memory", -2),
    ("object", -2),
    ("info", -1),
    ("raft.transfer-leader", 2),
    ("raft.node", -2),
    ("raft.backup", -2),
    ("select", 2),
    ("client", -2),
    ("slowlog", -2),
    ("latency", -2),
    ("quit", -1),
    ("multi", 1),
    ("exec", 1),
    ("discard", 1),
    ("watch", -2),
    ("hello", -1),
    ("auth", -2),
    ("reset", 1),
    ("time", 1),
    ("function", -2),
    ("script", -2),
    ("unwatch", 1),
];

/// Every command this build knows (see `CORE_COMMANDS`) and its arity.
pub fn commands() -> impl Iterator<Item = &'static (&'static str, i32)> {
    CORE_COMMANDS.iter().chain(crate::parse_coll::COMMANDS)
}

/// The name a command is counted under in the metrics: a known command's, lowercase; any
/// other (unknown, or a typo: client input must not grow the label set) is `other`.
pub fn metric_name(name: &[u8]) -> &'static str {
    use std::collections::HashMap;
    use std::sync::OnceLock;
    static NAMES: OnceLock<HashMap<&'static str, &'static str>> = OnceLock::new();
    let names = NAMES.get_or_init(|| commands().map(|(n, _)| (*n, *n)).collect());
    if name.len() > 32 {
        return "other";
    }
    let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
    names.get(lower.as_str()).copied().unwrap_or("other")
}

/// Redis's reply to a command name it does not know.
pub fn unknown_command(name: &[u8], args: &[Bytes]) -> Reply {
    // As Redis: the name and the first arguments, quoted, with at most 128 bytes of arguments.
    let mut shown = String::new();
    for a in args {
        let room = 128usize.saturating_sub(shown.len());
        if room == 0 {
            break;
        }
        let text = sanitize(a);
        let cut: String = text.chars().take(room).collect();
        shown.push_str(&format!("'{cut}' "));
    }
    let name = sanitize(&name[..name.len().min(128)]);
    Reply::error(format!("ERR unknown command '{name}', with args beginning with: {shown}"))
}

fn sanitize(b: &[u8]) -> String {
    String::from_utf8_lossy(b).replace(['\r', '\n'], " ")
}

fn wrong_arity(name: &str) -> Reply {
    Reply::error(format!("ERR wrong number of arguments for '{name}' command"))
}

fn not_integer() -> Reply {
    Reply::error(ERR_NOT_INTEGER)
}

/// Parses one client command (`argv[0]` is the name).
pub fn parse(argv: Vec<Bytes>) -> Request {
    let Some((name_raw, args)) = argv.split_first() else {
        return Request::Immediate(Reply::Null);
    };
    let name = String::from_utf8_lossy(name_raw).to_ascii_lowercase();
    let Some(&(name, arity)) = commands().find(|(n, _)| *n == name) else {
        return Request::Immediate(unknown_command(name_raw, args));
    };
    let argc = argv.len() as i32;
    if (arity > 0 && argc != arity) || (arity < 0 && argc < -arity) {
        return Request::Immediate(wrong_arity(name));
    }
    let a = |i: usize| args[i].clone();
    let k = |i: usize| args[i].to_vec();
    let keys = |args: &[Bytes]| args.iter().map(|a| a.to_vec()).collect::<Vec<_>>();
    let query = |q: Query| Request::Read(ReadCommand::Query(q));
    match name {
        "ping" => match args.len() {
            0 => Request::Immediate(Reply::Simple("PONG")),
            1 => Request::Immediate(Reply::Bulk(a(0))),
            _ => Request::Immediate(wrong_arity(name)),
        },
        "echo" => Request::Immediate(Reply::Bulk(a(0))),
        "get" => query(Query::Get(k(0))),
        "mget" => query(Query::MGet(keys(args))),
        "exists" | "touch" => query(Query::Exists(keys(args))),
        "keys" => Request::Read(ReadCommand::Keys(a(0))),
        "type" => query(Query::Type(k(0))),
        "dbsize" => Request::Read(ReadCommand::DbSize),
        "randomkey" => Request::Read(ReadCommand::RandomKey),
        "scan" => match scan_options(&args[0], &args[1..], true) {
            Ok((cursor, pattern, count, type_name)) => {
                Request::Read(ReadCommand::Scan { cursor, pattern, count, type_name })
            }
            Err(reply) => Request::Immediate(reply),
        },
        "hscan" => element_scan(args, raft_kv_core::kv::Kind::Hash),
        "strlen" => query(Query::StrLen(k(0))),
        "getrange" | "substr" => match (parse_i64(&args[1]), parse_i64(&args[2])) {
            (Some(start), Some(end)) => query(Query::GetRange { key: k(0), start, end }),
            _ => Request::Immediate(not_integer()),
        },
        "set" => match set_command(args) {
            Ok(c) => Request::Write(c),
            Err(reply) => Request::Immediate(reply),
        },
        "setex" | "psetex" => {
            let unit = if name == "setex" { b"ex".as_slice() } else { b"px".as_slice() };
            match expiry_option(name, unit, &args[1]) {
                Ok(expiry) => Request::Write(Command::Set {
                    key: a(0).to_vec(),
                    value: a(2).to_vec(),
                    cond: SetCond::Always,
                    get: false,
                    expiry,
                }),
                Err(reply) => Request::Immediate(reply),
            }
        }
        "getex" => match getex_command(args) {
            Ok(Some(c)) => Request::Write(c),
            Ok(None) => query(Query::Get(k(0))),
            Err(reply) => Request::Immediate(reply),
        },
        "expire" | "pexpire" | "expireat" | "pexpireat" => match expire_command(name, args) {
            Ok(c) => Request::Write(c),
            Err(reply) => Request::Immediate(reply),
        },
        "persist" => Request::Write(Command::Persist { key: a(0).to_vec() }),
        "ttl" | "pttl" | "expiretime" | "pexpiretime" => query(Query::Ttl {
            key: k(0),
            millis: name.starts_with('p'),
            absolute: name.ends_with("time"),
        }),
        "hset" | "hmset" => {
            if args.len() % 2 != 1 {
                return Request::Immediate(wrong_arity(name));
            }
            let pairs = args[1..].chunks(2).map(|p| (p[0].to_vec(), p[1].to_vec())).collect();
            Request::Write(Command::HSet {
                key: a(0).to_vec(),
                pairs,
                nx: false,
                reply_ok: name == "hmset",
            })
        }
        "hsetnx" => Request::Write(Command::HSet {
            key: a(0).to_vec(),
            pairs: vec![(a(1).to_vec(), a(2).to_vec())],
            nx: true,
            reply_ok: false,
        }),
        "hget" => query(Query::HGet { key: k(0), field: k(1) }),
        "hmget" => query(Query::HMGet { key: k(0), fields: keys(&args[1..]) }),
        "hdel" => Request::Write(Command::HDel {
            key: a(0).to_vec(),
            fields: args[1..].iter().map(|f| f.to_vec()).collect(),
        }),
        "hexists" => query(Query::HExists { key: k(0), field: k(1) }),
        "hlen" => query(Query::HLen(k(0))),
        "hstrlen" => query(Query::HStrLen { key: k(0), field: k(1) }),
        "hrandfield" => hrandfield_command(args),
        "hgetall" | "hkeys" | "hvals" => {
            query(Query::HGetAll { key: k(0), fields: name != "hvals", values: name != "hkeys" })
        }
        "hincrby" => match parse_i64(&args[2]) {
            Some(delta) => {
                Request::Write(Command::HIncrBy { key: a(0).to_vec(), field: a(1).to_vec(), delta })
            }
            None => Request::Immediate(not_integer()),
        },
        "hincrbyfloat" => {
            if parse_f64(&args[2]).is_none() {
                return Request::Immediate(Reply::error(raft_kv_core::kv::ERR_NOT_FLOAT));
            }
            Request::Write(Command::HIncrByFloat {
                key: a(0).to_vec(),
                field: a(1).to_vec(),
                delta: a(2).to_vec(),
            })
        }
        "setnx" => Request::Write(Command::MSetNx { pairs: vec![(a(0).to_vec(), a(1).to_vec())] }),
        "getset" => Request::Write(Command::Set {
            key: a(0).to_vec(),
            value: a(1).to_vec(),
            cond: SetCond::Always,
            get: true,
            expiry: Expiry::Clear,
        }),
        "getdel" => Request::Write(Command::GetDel { key: a(0).to_vec() }),
        "del" | "unlink" => {
            Request::Write(Command::Del { keys: args.iter().map(|k| k.to_vec()).collect() })
        }
        "mset" | "msetnx" => {
            if args.len() % 2 != 0 {
                return Request::Immediate(wrong_arity(name));
            }
            let pairs = args.chunks(2).map(|p| (p[0].to_vec(), p[1].to_vec())).collect();
            Request::Write(if name == "mset" {
                Command::MSet { pairs }
            } else {
                Command::MSetNx { pairs }
            })
        }
        "rename" | "renamenx" => Request::Write(Command::Rename {
            from: a(0).to_vec(),
            to: a(1).to_vec(),
            nx: name == "renamenx",
        }),
        "copy" => match copy_command(args) {
            Ok(c) => Request::Write(c),
            Err(reply) => Request::Immediate(reply),
        },
        "flushdb" | "flushall" => match args {
            [] => Request::Write(Command::FlushAll),
            [_] if matches!(subcommand(args).as_str(), "sync" | "async") => {
                Request::Write(Command::FlushAll)
            }
            _ => Request::Immediate(syntax_error()),
        },
        "incrbyfloat" => {
            if parse_f64(&args[1]).is_none() {
                return Request::Immediate(Reply::error(raft_kv_core::kv::ERR_NOT_FLOAT));
            }
            Request::Write(Command::IncrByFloat { key: a(0).to_vec(), delta: a(1).to_vec() })
        }
        "setrange" => match parse_i64(&args[1]) {
            None => Request::Immediate(not_integer()),
            Some(n) if n < 0 => Request::Immediate(Reply::error("ERR offset is out of range")),
            Some(n) => Request::Write(Command::SetRange {
                key: a(0).to_vec(),
                offset: n as u64,
                value: a(2).to_vec(),
            }),
        },
        "incr" => Request::Write(Command::IncrBy { key: a(0).to_vec(), delta: 1 }),
        "decr" => Request::Write(Command::IncrBy { key: a(0).to_vec(), delta: -1 }),
        "incrby" | "decrby" => {
            let Some(n) = parse_i64(&args[1]) else {
                return Request::Immediate(not_integer());
            };
            let delta = if name == "incrby" {
                n
            } else {
                match n.checked_neg() {
                    Some(d) => d,
                    None => {
                        return Request::Immediate(Reply::error("ERR decrement would overflow"))
                    }
                }
            };
            Request::Write(Command::IncrBy { key: a(0).to_vec(), delta })
        }
        "append" => Request::Write(Command::Append { key: a(0).to_vec(), value: a(1).to_vec() }),
        "command" => Request::Immediate(command_command(args)),
        "function" | "script" => Request::Immediate(function_command(name, args)),
        "config" => config_command(args),
        "memory" => memory_command(args),
        "object" => object_command(args),
        "info" => Request::Admin(AdminCommand::Info(
            args.iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect(),
        )),
        "raft.node" => Request::Admin(match raft_node_command(args) {
            Ok(c) => c,
            Err(reply) => return Request::Immediate(reply),
        }),
        "raft.backup" => {
            let id = || args.get(1).and_then(|a| parse_i64(a)).filter(|n| *n >= 0);
            match (subcommand(args).as_str(), args.len(), id()) {
                ("start", 1, _) => Request::Read(ReadCommand::BackupStart),
                ("next", 2, Some(id)) => Request::Admin(AdminCommand::BackupNext(id as u64)),
                ("abort", 2, Some(id)) => Request::Admin(AdminCommand::BackupAbort(id as u64)),
                ("next" | "abort", 2, None) => {
                    Request::Immediate(Reply::error("ERR the backup id must be a number"))
                }
                ("start" | "next" | "abort", ..) => {
                    Request::Immediate(wrong_arity(&format!("raft.backup|{}", subcommand(args))))
                }
                _ => Request::Immediate(unknown_subcommand("raft.backup", &args[0])),
            }
        }
        "raft.transfer-leader" => match parse_i64(&args[0]) {
            Some(id) if id >= 1 => Request::Admin(AdminCommand::TransferLeader(id as u64)),
            _ => Request::Immediate(Reply::error("ERR node id must be a positive integer")),
        },
        "select" => match parse_i64(&args[0]) {
            Some(0) => Request::Immediate(Reply::ok()),
            Some(_) => Request::Immediate(Reply::error("ERR DB index is out of range")),
            None => Request::Immediate(not_integer()),
        },
        "client" => match client_command(args) {
            Ok(c) => Request::Connection(ConnectionCommand::Client(c)),
            Err(reply) => Request::Immediate(reply),
        },
        "slowlog" | "latency" => match monitor_command(name, args) {
            Ok(c) => Request::Connection(ConnectionCommand::Monitor(c)),
            Err(reply) => Request::Immediate(reply),
        },
        "quit" => Request::Quit,
        "multi" => Request::Connection(ConnectionCommand::Multi),
        "exec" => Request::Connection(ConnectionCommand::Exec),
        "discard" => Request::Connection(ConnectionCommand::Discard),
        "watch" => Request::Connection(ConnectionCommand::Watch(args.to_vec())),
        "hello" => match hello_command(args) {
            Ok(c) => Request::Connection(c),
            Err(reply) => Request::Immediate(reply),
        },
        "auth" => match args {
            [password] => Request::Connection(ConnectionCommand::Auth(None, password.clone())),
            [user, password] => {
                Request::Connection(ConnectionCommand::Auth(Some(user.clone()), password.clone()))
            }
            _ => Request::Immediate(syntax_error()),
        },
        "reset" => Request::Connection(ConnectionCommand::Reset),
        "time" => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            Request::Immediate(Reply::Array(vec![
                Reply::Bulk(Bytes::from(now.as_secs().to_string())),
                Reply::Bulk(Bytes::from(now.subsec_micros().to_string())),
            ]))
        }
        "unwatch" => Request::Connection(ConnectionCommand::Unwatch),
        other => crate::parse_coll::parse(other, args)
            .expect("every name in the command tables has a branch"),
    }
}

/// SCAN's and HSCAN's cursor and options (TYPE for SCAN only).
#[allow(clippy::type_complexity)]
/// HSCAN, SSCAN, ZSCAN.
pub(crate) fn element_scan(args: &[Bytes], kind: raft_kv_core::kv::Kind) -> Request {
    match scan_options(&args[1], &args[2..], false) {
        Ok((cursor, pattern, count, _)) => {
            let key = args[0].to_vec();
            Request::Read(ReadCommand::ElementScan { key, kind, cursor, pattern, count })
        }
        Err(reply) => Request::Immediate(reply),
    }
}

/// An element scan from cursor 0 as one query returning everything (inside MULTI, where no
/// node-local cursor can be handed out).
pub fn element_scan_whole(
    key: Vec<u8>,
    kind: raft_kv_core::kv::Kind,
    pattern: Option<Bytes>,
) -> Query {
    use raft_kv_core::kv::{Kind, SetQuery, ZQuery};
    let pattern = pattern.map(|p| p.to_vec());
    match kind {
        Kind::Set => Query::Sets(SetQuery::Scan { key, pattern }),
        Kind::ZSet => Query::ZSet(ZQuery::Scan { key, pattern }),
        _ => Query::HScan { key, pattern },
    }
}

pub(crate) fn scan_options(
    cursor: &[u8],
    opts: &[Bytes],
    with_type: bool,
) -> Result<(u64, Option<Bytes>, usize, Option<String>), Reply> {
    let cursor = std::str::from_utf8(cursor)
        .ok()
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| Reply::error("ERR invalid cursor"))?;
    let (mut pattern, mut count, mut type_name) = (None, 10usize, None);
    let mut i = 0;
    while i < opts.len() {
        let value = opts.get(i + 1).ok_or_else(syntax_error)?;
        match opts[i].to_ascii_lowercase().as_slice() {
            b"match" => pattern = Some(value.clone()),
            b"count" => match parse_i64(value) {
                Some(n) if n >= 1 => count = n as usize,
                Some(_) => return Err(syntax_error()),
                None => return Err(not_integer()),
            },
            b"type" if with_type => {
                type_name = Some(String::from_utf8_lossy(value).to_ascii_lowercase())
            }
            _ => return Err(syntax_error()),
        }
        i += 2;
    }
    Ok((cursor, pattern, count, type_name))
}

/// HRANDFIELD key [count [WITHVALUES]], with Redis 7.0's errors: a count that is no integer,
/// one that is `i64::MIN` (its negation would overflow), WITHVALUES with a count whose pairs
/// would overflow, then a syntax error for anything else after the count.
fn hrandfield_command(args: &[Bytes]) -> Request {
    let key = args[0].to_vec();
    let Some(raw) = args.get(1) else {
        return Request::Read(ReadCommand::HRandField { key, count: None, with_values: false });
    };
    let count = match parse_i64(raw) {
        None => return Request::Immediate(Reply::error(ERR_NOT_INTEGER)),
        Some(i64::MIN) => {
            return Request::Immediate(Reply::error(format!(
                "ERR value is out of range, value must between {} and {}",
                -i64::MAX,
                i64::MAX
            )))
        }
        Some(n) => n,
    };
    let with_values = match &args[2..] {
        [] => false,
        [w] if w.eq_ignore_ascii_case(b"withvalues") => true,
        _ => return Request::Immediate(syntax_error()),
    };
    if with_values && !(-i64::MAX / 2..=i64::MAX / 2).contains(&count) {
        return Request::Immediate(Reply::error("ERR value is out of range"));
    }
    Request::Read(ReadCommand::HRandField { key, count: Some(count), with_values })
}

/// MEMORY USAGE key [SAMPLES count]; the other subcommands are not served. SAMPLES is checked
/// as Redis 7.0 checks it and changes nothing: the estimate reads the whole value.
fn object_command(args: &[Bytes]) -> Request {
    let sub = subcommand(args);
    if sub == "help" && args.len() == 1 {
        let lines = [
            "OBJECT <subcommand> [<arg> [value] [opt] ...]. Subcommands are:",
            "ENCODING <key>",
            "    Return the kind of internal representation used in order to store the value",
            "    associated with a <key>.",
            "FREQ <key>",
            "    Return the access frequency index of the <key>. The returned integer is",
            "    proportional to the logarithm of the recent access frequency of the key.",
            "IDLETIME <key>",
            "    Return the idle time of the <key>, that is the approximated number of",
            "    seconds elapsed since the last access to the key.",
            "REFCOUNT <key>",
            "    Return the number of references of the value associated with the specified",
            "    <key>.",
            "HELP",
            "    Print this help.",
        ];
        return Request::Immediate(Reply::Array(
            lines.iter().map(|l| Reply::Status(l.to_string())).collect(),
        ));
    }
    let sub = match sub.as_str() {
        "encoding" => ObjectSub::Encoding,
        "refcount" => ObjectSub::RefCount,
        "idletime" => ObjectSub::IdleTime,
        "freq" => ObjectSub::Freq,
        _ => return Request::Immediate(unknown_subcommand("object", &args[0])),
    };
    if args.len() != 2 {
        let name = format!("object|{}", String::from_utf8_lossy(&args[0]).to_ascii_lowercase());
        return Request::Immediate(wrong_arity(&name));
    }
    Request::Read(ReadCommand::Object { sub, key: args[1].to_vec() })
}

fn memory_command(args: &[Bytes]) -> Request {
    if subcommand(args) != "usage" {
        return Request::Immediate(unknown_subcommand("memory", &args[0]));
    }
    let Some(key) = args.get(1) else {
        return Request::Immediate(wrong_arity("memory|usage"));
    };
    let mut options = args[2..].iter();
    while let Some(option) = options.next() {
        let samples = option.eq_ignore_ascii_case(b"samples").then(|| options.next()).flatten();
        match samples.map(|n| parse_i64(n)) {
            None => return Request::Immediate(syntax_error()),
            Some(None) => return Request::Immediate(Reply::error(ERR_NOT_INTEGER)),
            Some(Some(n)) if n < 0 => return Request::Immediate(syntax_error()),
            Some(Some(_)) => {}
        }
    }
    Request::Read(ReadCommand::MemoryUsage(key.to_vec()))
}

fn syntax_error() -> Reply {
    Reply::error("ERR syntax error")
}

/// Relative deadlines past this many milliseconds are refused: Redis refuses a deadline that
/// overflows a signed 64-bit millisecond count once the current time is added, and the current
/// time stays below 2^42 ms until the year 2109.
const RELATIVE_MS_MAX: i64 = i64::MAX - (1 << 42);

/// The expiry an EX / PX / EXAT / PXAT option of `cmd` with `value` asks for.
fn expiry_option(cmd: &str, unit: &[u8], value: &[u8]) -> Result<Expiry, Reply> {
    let n = parse_i64(value).ok_or_else(not_integer)?;
    let invalid = || Reply::error(format!("ERR invalid expire time in '{cmd}' command"));
    let seconds = matches!(unit, b"ex" | b"exat");
    if n <= 0 || (seconds && n > i64::MAX / 1000) {
        return Err(invalid());
    }
    let ms = if seconds { n * 1000 } else { n };
    match unit {
        b"ex" | b"px" if ms > RELATIVE_MS_MAX => Err(invalid()),
        b"ex" | b"px" => Ok(Expiry::In(ms as u64)),
        _ => Ok(Expiry::At(ms as u64)),
    }
}

/// SET key value [NX | XX] [GET] [EX s | PX ms | EXAT t | PXAT t | KEEPTTL].
fn set_command(args: &[Bytes]) -> Result<Command, Reply> {
    let mut cond = SetCond::Always;
    let mut get = false;
    let mut expiry: Option<Expiry> = None;
    let mut i = 2;
    while i < args.len() {
        let opt = args[i].to_ascii_lowercase();
        match opt.as_slice() {
            b"nx" if cond != SetCond::IfPresent => cond = SetCond::IfAbsent,
            b"xx" if cond != SetCond::IfAbsent => cond = SetCond::IfPresent,
            b"get" => get = true,
            b"keepttl" if matches!(expiry, None | Some(Expiry::Keep)) => {
                expiry = Some(Expiry::Keep)
            }
            b"ex" | b"px" | b"exat" | b"pxat" if expiry.is_none() && i + 1 < args.len() => {
                i += 1;
                expiry = Some(expiry_option("set", &opt, &args[i])?);
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    let expiry = expiry.unwrap_or(Expiry::Clear);
    Ok(Command::Set { key: args[0].to_vec(), value: args[1].to_vec(), cond, get, expiry })
}

/// GETEX key [EX s | PX ms | EXAT t | PXAT t | PERSIST]: None without an option (a read).
fn getex_command(args: &[Bytes]) -> Result<Option<Command>, Reply> {
    let mut expiry: Option<Expiry> = None;
    let mut i = 1;
    while i < args.len() {
        let opt = args[i].to_ascii_lowercase();
        match opt.as_slice() {
            b"persist" if expiry.is_none() => expiry = Some(Expiry::Clear),
            b"ex" | b"px" | b"exat" | b"pxat" if expiry.is_none() && i + 1 < args.len() => {
                i += 1;
                expiry = Some(expiry_option("getex", &opt, &args[i])?);
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    Ok(expiry.map(|expiry| Command::GetEx { key: args[0].to_vec(), expiry }))
}

/// EXPIRE / PEXPIRE / EXPIREAT / PEXPIREAT key amount [NX | XX | GT | LT].
fn expire_command(name: &str, args: &[Bytes]) -> Result<Command, Reply> {
    let amount = parse_i64(&args[1]).ok_or_else(not_integer)?;
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for opt in &args[2..] {
        match opt.to_ascii_lowercase().as_slice() {
            b"nx" => nx = true,
            b"xx" => xx = true,
            b"gt" => gt = true,
            b"lt" => lt = true,
            _ => return Err(Reply::error(format!("ERR Unsupported option {}", sanitize(opt)))),
        }
    }
    if nx && (xx || gt || lt) {
        return Err(Reply::error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(Reply::error("ERR GT and LT options at the same time are not compatible"));
    }
    // XX with GT or LT: both must hold; GT and LT already require a deadline or treat none as
    // infinite, so XX adds "has one".
    let cond = match (nx, xx, gt, lt) {
        (true, ..) => ExpireCond::NoExpiry,
        (_, _, true, _) => ExpireCond::Later,
        (_, true, _, true) => ExpireCond::HasExpiryAndEarlier,
        (_, _, _, true) => ExpireCond::Earlier,
        (_, true, ..) => ExpireCond::HasExpiry,
        _ => ExpireCond::Always,
    };
    Ok(Command::Expire {
        key: args[0].to_vec(),
        amount,
        millis: name.starts_with('p'),
        absolute: name.ends_with("at"),
        cond,
    })
}

/// COPY source destination [DB destination-db] [REPLACE]; only database 0 exists.
fn copy_command(args: &[Bytes]) -> Result<Command, Reply> {
    let mut replace = false;
    let mut i = 2;
    while i < args.len() {
        match args[i].to_ascii_lowercase().as_slice() {
            b"replace" => replace = true,
            b"db" if i + 1 < args.len() => {
                i += 1;
                match parse_i64(&args[i]) {
                    Some(0) => {}
                    Some(_) => return Err(Reply::error("ERR DB index is out of range")),
                    None => return Err(not_integer()),
                }
            }
            _ => return Err(syntax_error()),
        }
        i += 1;
    }
    if args[0] == args[1] {
        return Err(Reply::error("ERR source and destination objects are the same"));
    }
    Ok(Command::Copy { from: args[0].to_vec(), to: args[1].to_vec(), replace })
}

fn raft_node_command(args: &[Bytes]) -> Result<AdminCommand, Reply> {
    let id = |b: &Bytes| match parse_i64(b) {
        Some(id) if id >= 1 => Ok(id as u64),
        _ => Err(Reply::error("ERR node id must be a positive integer")),
    };
    match (subcommand(args).as_str(), args.len()) {
        ("add", 3) => {
            let addr = String::from_utf8_lossy(&args[2]);
            let addr = addr.parse().map_err(|_| {
                Reply::error(format!(
                    "ERR '{}' is not a Raft address (host:port)",
                    sanitize(&args[2])
                ))
            })?;
            Ok(AdminCommand::NodeAdd { id: id(&args[1])?, addr })
        }
        ("remove", 2) => Ok(AdminCommand::NodeRemove(id(&args[1])?)),
        ("add", _) => Err(wrong_arity("raft.node|add")),
        ("remove", _) => Err(wrong_arity("raft.node|remove")),
        _ => Err(unknown_subcommand("raft.node", &args[0])),
    }
}

fn subcommand(args: &[Bytes]) -> String {
    String::from_utf8_lossy(&args[0]).to_ascii_lowercase()
}

fn unknown_subcommand(cmd: &str, sub: &[u8]) -> Reply {
    let sub = sanitize(sub);
    Reply::error(format!("ERR unknown subcommand '{sub}'. Try {} HELP.", cmd.to_ascii_uppercase()))
}

/// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS`: enough for redis-cli's start-up probe.
/// Commands that only read the data (COMMAND INFO's `readonly` flag; the rest write or are
/// about the connection or the node).
const READ_ONLY: &[&str] = &[
    "get",
    "mget",
    "exists",
    "touch",
    "keys",
    "type",
    "dbsize",
    "strlen",
    "getrange",
    "substr",
    "ttl",
    "pttl",
    "expiretime",
    "pexpiretime",
    "hget",
    "hmget",
    "hexists",
    "hlen",
    "hstrlen",
    "hgetall",
    "hkeys",
    "hvals",
    "hrandfield",
    "memory",
    "object",
    "scan",
    "hscan",
    "randomkey",
];

/// Where a command's keys are: first, last (-1: the end), step; 0, 0, 0 for none.
fn key_positions(name: &str) -> (i64, i64, i64) {
    match name {
        "mset" | "msetnx" => (1, -1, 2),
        "mget" | "del" | "unlink" | "exists" | "touch" | "watch" => (1, -1, 1),
        "rename" | "renamenx" | "copy" | "lmove" | "rpoplpush" | "smove" | "zrangestore"
        | "blmove" | "brpoplpush" => (1, 2, 1),
        "blpop" | "brpop" | "bzpopmin" | "bzpopmax" => (1, -2, 1),
        "sinterstore" | "sunionstore" | "sdiffstore" | "sinter" | "sunion" | "sdiff" => (1, -1, 1),
        "lmpop" | "zmpop" | "sintercard" | "zintercard" | "zunion" | "zinter" | "zdiff"
        | "zunionstore" | "zinterstore" | "zdiffstore" | "blmpop" | "bzmpop" => (0, 0, 0),
        "ping" | "echo" | "command" | "config" | "info" | "select" | "client" | "quit"
        | "multi" | "exec" | "discard" | "unwatch" | "hello" | "auth" | "reset" | "time"
        | "dbsize" | "flushdb" | "flushall" | "scan" | "randomkey" | "keys" | "function"
        | "script" => (0, 0, 0),
        n if n.starts_with("raft.") => (0, 0, 0),
        _ => (1, 1, 1),
    }
}

/// COMMAND INFO's entry for `name`, in Redis 7's ten-element shape.
fn command_info(name: &str, arity: i32) -> Reply {
    let read_only = READ_ONLY.contains(&name) || crate::parse_coll::READ_ONLY.contains(&name);
    let flag = if read_only { "readonly" } else { "write" };
    let (first, last, step) = key_positions(name);
    Reply::Array(vec![
        Reply::Bulk(Bytes::from(name.to_string())),
        Reply::Integer(arity as i64),
        Reply::Array(vec![Reply::Simple(flag)]),
        Reply::Integer(first),
        Reply::Integer(last),
        Reply::Integer(step),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

/// COMMAND, COMMAND COUNT, COMMAND INFO. COMMAND DOCS is answered as Redis 6 answers it (no
/// such subcommand): redis-cli then shows its own built-in hints for every command.
fn command_command(args: &[Bytes]) -> Reply {
    if args.is_empty() {
        return Reply::Array(commands().map(|(n, a)| command_info(n, *a)).collect());
    }
    match subcommand(args).as_str() {
        "count" => Reply::Integer(commands().count() as i64),
        "info" if args.len() == 1 => {
            Reply::Array(commands().map(|(n, a)| command_info(n, *a)).collect())
        }
        "info" => Reply::Array(
            args[1..]
                .iter()
                .map(|n| {
                    let n = String::from_utf8_lossy(n).to_ascii_lowercase();
                    commands()
                        .find(|(c, _)| *c == n)
                        .map_or(Reply::Null, |(c, a)| command_info(c, *a))
                })
                .collect(),
        ),
        "docs" => Reply::error(
            "ERR Unknown subcommand or wrong number of arguments for 'DOCS'. Try COMMAND HELP.",
        ),
        "getkeys" if args.len() < 3 => {
            Reply::error("ERR wrong number of arguments for 'command|getkeys' command")
        }
        "getkeys" => match command_keys(&args[1..]) {
            Ok(keys) => Reply::Array(keys.into_iter().map(Reply::Bulk).collect()),
            Err(msg) => Reply::error(msg),
        },
        _ => unknown_subcommand("command", &args[0]),
    }
}

/// COMMAND GETKEYS: the keys of `argv` (a command and its arguments), as Redis finds them,
/// or Redis's error.
fn command_keys(argv: &[Bytes]) -> Result<Vec<Bytes>, &'static str> {
    const BAD_ARITY: &str = "ERR Invalid number of arguments specified for command";
    let name = String::from_utf8_lossy(&argv[0]).to_ascii_lowercase();
    let Some((name, arity)) = commands().find(|(n, _)| *n == name) else {
        return Err("ERR Invalid command specified");
    };
    let argc = argv.len() as i64;
    let arity = i64::from(*arity);
    if (arity > 0 && argc != arity) || argc < -arity {
        return Err(BAD_ARITY);
    }
    // Commands whose keys a count names: where the count is, and the keys before it.
    let counted = match *name {
        "lmpop" | "zmpop" | "sintercard" | "zintercard" | "zunion" | "zinter" | "zdiff" => Some(1),
        "blmpop" | "bzmpop" => Some(2),
        "zunionstore" | "zinterstore" | "zdiffstore" => Some(2),
        _ => None,
    };
    if let Some(at) = counted {
        let n = parse_i64(&argv[at]).filter(|n| *n > 0 && at as i64 + n < argc).ok_or(BAD_ARITY)?;
        let dest = matches!(*name, "zunionstore" | "zinterstore" | "zdiffstore");
        let mut keys: Vec<Bytes> = argv[1..at].iter().filter(|_| dest).cloned().collect();
        keys.extend(argv[at + 1..=at + n as usize].iter().cloned());
        return Ok(keys);
    }
    if matches!(*name, "sort" | "sort_ro") {
        // Redis's sortGetKeys: the key, and the argument after the last STORE that has one.
        let mut store = None;
        let mut i = 2;
        while i < argv.len() {
            let opt = argv[i].to_ascii_lowercase();
            match opt.as_slice() {
                b"limit" => i += 2,
                b"get" | b"by" => i += 1,
                b"store" if i + 1 < argv.len() => store = Some(argv[i + 1].clone()),
                _ => {}
            }
            i += 1;
        }
        return Ok(std::iter::once(argv[1].clone()).chain(store).collect());
    }
    let (first, last, step) = key_positions(name);
    if first == 0 {
        return Err("ERR The command has no key arguments");
    }
    let last = if last < 0 { argc + last } else { last.min(argc - 1) };
    Ok((first..=last).step_by(step as usize).map(|i| argv[i as usize].clone()).collect())
}

/// FUNCTION and SCRIPT: there are none to flush or list, so FLUSH and LIST answer as on an
/// empty Redis (tools call them on start-up); the rest are refused.
fn function_command(cmd: &str, args: &[Bytes]) -> Reply {
    match (subcommand(args).as_str(), args.len()) {
        ("flush", 1) => Reply::ok(),
        ("flush", 2) if matches!(subcommand(&args[1..]).as_str(), "sync" | "async") => Reply::ok(),
        ("list", _) if cmd == "function" => Reply::Array(Vec::new()),
        _ => unknown_subcommand(cmd, &args[0]),
    }
}

/// Parameters CONFIG GET reports and CONFIG SET accepts, with their values at start: what
/// clients and test harnesses probe. Setting one changes what CONFIG GET reports on that node
/// and nothing else (raft-kv always fsyncs, never evicts, has one database), except the slow
/// log's and the latency monitor's, which steer them on that node.
pub const CONFIG_DEFAULTS: &[(&str, &str)] = &[
    ("appendfsync", "always"),
    ("appendonly", "no"),
    ("databases", "1"),
    // Redis 7.0's thresholds between its compact and its general encodings. raft-kv has no
    // such encodings: they are here so tools and Redis's own tests that set them run.
    ("hash-max-listpack-entries", "512"),
    ("hash-max-listpack-value", "64"),
    ("hash-max-ziplist-entries", "512"),
    ("hash-max-ziplist-value", "64"),
    ("latency-monitor-threshold", "0"),
    ("list-compress-depth", "0"),
    ("list-max-listpack-size", "-2"),
    ("list-max-ziplist-size", "-2"),
    ("loglevel", "notice"),
    ("maxmemory", "0"),
    ("maxmemory-policy", "noeviction"),
    ("save", ""),
    ("set-max-intset-entries", "512"),
    ("slowlog-log-slower-than", "10000"),
    ("slowlog-max-len", "128"),
    ("timeout", "0"),
    ("zset-max-listpack-entries", "128"),
    ("zset-max-listpack-value", "64"),
    ("zset-max-ziplist-entries", "128"),
    ("zset-max-ziplist-value", "64"),
];

/// Parameters Redis 7.0 keeps under two names (the old `ziplist` one is an alias of the
/// `listpack` one): setting either sets both.
pub const CONFIG_ALIASES: &[(&str, &str)] = &[
    ("hash-max-ziplist-entries", "hash-max-listpack-entries"),
    ("hash-max-ziplist-value", "hash-max-listpack-value"),
    ("list-max-ziplist-size", "list-max-listpack-size"),
    ("zset-max-ziplist-entries", "zset-max-listpack-entries"),
    ("zset-max-ziplist-value", "zset-max-listpack-value"),
];

fn config_command(args: &[Bytes]) -> Request {
    match (subcommand(args).as_str(), args.len()) {
        ("get", 2..) => Request::Admin(AdminCommand::ConfigGet(args[1..].to_vec())),
        ("get", _) => Request::Immediate(wrong_arity("config|get")),
        ("set", n) if n >= 3 && n % 2 == 1 => {
            let pairs = args[1..]
                .chunks(2)
                .map(|p| (String::from_utf8_lossy(&p[0]).to_ascii_lowercase(), p[1].clone()))
                .collect();
            Request::Admin(AdminCommand::ConfigSet(pairs))
        }
        ("set", _) => Request::Immediate(wrong_arity("config|set")),
        ("resetstat", 1) => Request::Immediate(Reply::ok()),
        ("rewrite", 1) => {
            Request::Immediate(Reply::error("ERR The server is running without a config file"))
        }
        _ => Request::Immediate(unknown_subcommand("config", &args[0])),
    }
}

/// HELLO's arguments.
fn hello_command(args: &[Bytes]) -> Result<ConnectionCommand, Reply> {
    let Some((version, rest)) = args.split_first() else {
        return Ok(ConnectionCommand::Hello { protocol: None, auth: None, name: None });
    };
    let protocol = match parse_i64(version) {
        Some(v @ 2..=3) => v as u8,
        Some(_) => return Err(Reply::error("NOPROTO unsupported protocol version")),
        None => return Err(Reply::error("ERR Protocol version is not an integer or out of range")),
    };
    let (mut auth, mut name) = (None, None);
    let mut i = 0;
    while i < rest.len() {
        match rest[i].to_ascii_lowercase().as_slice() {
            b"auth" if i + 2 < rest.len() => {
                auth = Some((rest[i + 1].clone(), rest[i + 2].clone()));
                i += 3;
            }
            b"setname" if i + 1 < rest.len() => {
                name = Some(rest[i + 1].clone());
                i += 2;
            }
            _ => {
                return Err(Reply::error(format!(
                    "ERR Syntax error in HELLO option '{}'",
                    sanitize(&rest[i])
                )))
            }
        }
    }
    Ok(ConnectionCommand::Hello { protocol: Some(protocol), auth, name })
}

/// Whether `name` is a valid client name: printable ASCII but space.
pub fn valid_client_name(name: &[u8]) -> bool {
    name.iter().all(|c| *c > b' ' && *c <= b'~')
}

/// SLOWLOG GET/LEN/RESET/HELP and LATENCY LATEST/RESET/HISTORY/DOCTOR/HELP, with Redis 7.0's
/// argument errors.
fn monitor_command(cmd: &str, args: &[Bytes]) -> Result<MonitorCommand, Reply> {
    let sub = subcommand(args);
    let arity = |n: usize| {
        if args.len() == n {
            Ok(())
        } else {
            Err(wrong_arity(&format!("{cmd}|{sub}")))
        }
    };
    Ok(match (cmd, sub.as_str()) {
        ("slowlog", "get") => match args.len() {
            1 => MonitorCommand::SlowGet(10),
            2 => match parse_i64(&args[1]) {
                Some(n) if n >= -1 => MonitorCommand::SlowGet(n),
                _ => return Err(Reply::error("ERR count should be greater than or equal to -1")),
            },
            _ => {
                return Err(Reply::error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try SLOWLOG HELP.",
                sanitize(&args[0])
            )))
            }
        },
        ("slowlog", "len") => arity(1).map(|()| MonitorCommand::SlowLen)?,
        ("slowlog", "reset") => arity(1).map(|()| MonitorCommand::SlowReset)?,
        ("slowlog", "help") => arity(1).map(|()| MonitorCommand::SlowHelp)?,
        ("latency", "latest") => arity(1).map(|()| MonitorCommand::LatencyLatest)?,
        ("latency", "reset") => MonitorCommand::LatencyReset(args[1..].to_vec()),
        ("latency", "history") => {
            arity(2).map(|()| MonitorCommand::LatencyHistory(args[1].clone()))?
        }
        ("latency", "doctor") => arity(1).map(|()| MonitorCommand::LatencyDoctor)?,
        ("latency", "help") => arity(1).map(|()| MonitorCommand::LatencyHelp)?,
        _ => return Err(unknown_subcommand(cmd, &args[0])),
    })
}

/// CLIENT ID, GETNAME, SETNAME; SETINFO is accepted (client libraries send it on connect).
fn client_command(args: &[Bytes]) -> Result<ClientCommand, Reply> {
    match (subcommand(args).as_str(), args.len()) {
        ("id", 1) => Ok(ClientCommand::Id),
        ("info", 1) => Ok(ClientCommand::Info),
        ("list", 1) => Ok(ClientCommand::List),
        ("getname", 1) => Ok(ClientCommand::GetName),
        ("setname", 2) => {
            if !valid_client_name(&args[1]) {
                return Err(Reply::error(
                    "ERR Client names cannot contain spaces, newlines or special characters.",
                ));
            }
            Ok(ClientCommand::SetName(args[1].clone()))
        }
        ("setinfo", 3) => Err(Reply::ok()),
        ("unblock", 2 | 3) => {
            let error = match args.get(2) {
                None => false,
                Some(r) if r.eq_ignore_ascii_case(b"timeout") => false,
                Some(r) if r.eq_ignore_ascii_case(b"error") => true,
                Some(_) => {
                    return Err(Reply::error(
                        "ERR CLIENT UNBLOCK reason should be TIMEOUT or ERROR",
                    ))
                }
            };
            // A negative or unknown id names no client: 0, as Redis answers.
            let id = parse_i64(&args[1]).ok_or_else(|| Reply::error(ERR_NOT_INTEGER))?;
            Ok(ClientCommand::Unblock { id: u64::try_from(id).unwrap_or(u64::MAX), error })
        }
        ("unblock", n) if n > 3 => Err(Reply::error(format!(
            "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
            sanitize(&args[0])
        ))),
        ("id" | "getname" | "setname" | "setinfo" | "info" | "unblock", _) => {
            Err(wrong_arity(&format!("client|{}", subcommand(args))))
        }
        _ => Err(unknown_subcommand("client", &args[0])),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Request {
        parse(args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect())
    }

    fn err(r: Request) -> String {
        match r {
            Request::Immediate(Reply::Error(e)) => e,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn errors_match_redis_7() {
        assert_eq!(err(p(&["GET"])), "ERR wrong number of arguments for 'get' command");
        assert_eq!(
            err(p(&["mset", "a", "1", "b"])),
            "ERR wrong number of arguments for 'mset' command"
        );
        assert_eq!(err(p(&["foo"])), "ERR unknown command 'foo', with args beginning with: ");
        assert_eq!(
            err(p(&["foo", "a", "b"])),
            "ERR unknown command 'foo', with args beginning with: 'a' 'b' "
        );
        assert_eq!(err(p(&["incrby", "k", "x"])), "ERR value is not an integer or out of range");
        assert_eq!(err(p(&["set", "k", "v", "nx", "xx"])), "ERR syntax error");
        assert_eq!(err(p(&["set", "k", "v", "px"])), "ERR syntax error");
    }

    #[test]
    fn commands_parse_to_requests() {
        assert_eq!(p(&["PING"]), Request::Immediate(Reply::Simple("PONG")));
        assert_eq!(
            p(&["decrby", "k", "5"]),
            Request::Write(Command::IncrBy { key: b"k".to_vec(), delta: -5 })
        );
        assert_eq!(
            p(&["del", "a", "b"]),
            Request::Write(Command::Del { keys: vec![b"a".to_vec(), b"b".to_vec()] })
        );
        assert_eq!(p(&["keys", "*"]), Request::Read(ReadCommand::Keys(Bytes::from_static(b"*"))));
        assert_eq!(
            p(&["config", "get", "save"]),
            Request::Admin(AdminCommand::ConfigGet(vec![Bytes::from_static(b"save")]))
        );
    }
}
