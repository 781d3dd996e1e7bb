//! Client commands: parsing RESP arguments into requests with Redis 7's exact error replies,
//! and the reply type the node produces. Pure functions; no I/O.

use bytes::Bytes;
use raft_kv_core::kv::{parse_i64, Command, WriteReply, ERR_NOT_INTEGER};

/// A reply in Redis terms; turned into RESP bytes in `resp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(&'static str),
    Error(String),
    Integer(i64),
    Bulk(Bytes),
    Null,
    Array(Vec<Reply>),
}

impl Reply {
    pub fn ok() -> Reply {
        Reply::Simple("OK")
    }

    pub fn error(msg: impl Into<String>) -> Reply {
        Reply::Error(msg.into())
    }
}

impl From<WriteReply> for Reply {
    fn from(r: WriteReply) -> Reply {
        match r {
            WriteReply::Ok => Reply::ok(),
            WriteReply::Integer(n) => Reply::Integer(n),
            WriteReply::Error(e) => Reply::Error(e),
        }
    }
}

/// A read served from applied state once ReadIndex confirms it is current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReadCommand {
    Get(Bytes),
    MGet(Vec<Bytes>),
    Exists(Vec<Bytes>),
    Keys(Bytes),
}

/// Introspection answered by the node without consensus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// INFO [section ...], the names lowercased; none: every section.
    Info(Vec<String>),
    /// RAFT.TRANSFER-LEADER <id>: hand leadership to node `id`; answered once it leads.
    TransferLeader(u64),
    /// RAFT.NODE ADD <id> <raft-addr>: a new learner, promoted once it caught up.
    NodeAdd { id: u64, addr: std::net::SocketAddr },
    /// RAFT.NODE REMOVE <id>.
    NodeRemove(u64),
}

/// What a parsed client command asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Request {
    /// Answered by the connection itself.
    Immediate(Reply),
    /// Answered, then the connection closes.
    Quit,
    Write(Command),
    Read(ReadCommand),
    Admin(AdminCommand),
}

/// Every command this build knows, with Redis's arity convention (negative: at least that many
/// arguments, command name included).
const COMMANDS: &[(&str, i32)] = &[
    ("ping", -1),
    ("echo", 2),
    ("get", 2),
    ("set", -3),
    ("del", -2),
    ("exists", -2),
    ("keys", 2),
    ("mget", -2),
    ("mset", -3),
    ("incr", 2),
    ("decr", 2),
    ("incrby", 3),
    ("decrby", 3),
    ("append", 3),
    ("command", -1),
    ("config", -2),
    ("info", -1),
    ("raft.transfer-leader", 2),
    ("raft.node", -2),
    ("select", 2),
    ("client", -2),
    ("quit", -1),
];

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
    let Some(&(name, arity)) = COMMANDS.iter().find(|(n, _)| *n == name) else {
        return Request::Immediate(unknown_command(name_raw, args));
    };
    let argc = argv.len() as i32;
    if (arity > 0 && argc != arity) || (arity < 0 && argc < -arity) {
        return Request::Immediate(wrong_arity(name));
    }
    let a = |i: usize| args[i].clone();
    match name {
        "ping" => match args.len() {
            0 => Request::Immediate(Reply::Simple("PONG")),
            1 => Request::Immediate(Reply::Bulk(a(0))),
            _ => Request::Immediate(wrong_arity(name)),
        },
        "echo" => Request::Immediate(Reply::Bulk(a(0))),
        "get" => Request::Read(ReadCommand::Get(a(0))),
        "mget" => Request::Read(ReadCommand::MGet(args.to_vec())),
        "exists" => Request::Read(ReadCommand::Exists(args.to_vec())),
        "keys" => Request::Read(ReadCommand::Keys(a(0))),
        "set" => {
            if args.len() > 2 {
                // SET's options (EX, NX, GET...) are not supported yet; Redis answers an
                // unknown option the same way.
                return Request::Immediate(Reply::error("ERR syntax error"));
            }
            Request::Write(Command::Set { key: a(0).to_vec(), value: a(1).to_vec() })
        }
        "del" => Request::Write(Command::Del { keys: args.iter().map(|k| k.to_vec()).collect() }),
        "mset" => {
            if args.len() % 2 != 0 {
                return Request::Immediate(wrong_arity(name));
            }
            let pairs = args.chunks(2).map(|p| (p[0].to_vec(), p[1].to_vec())).collect();
            Request::Write(Command::MSet { pairs })
        }
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
        "config" => Request::Immediate(config_command(args)),
        "info" => Request::Admin(AdminCommand::Info(
            args.iter().map(|a| String::from_utf8_lossy(a).to_ascii_lowercase()).collect(),
        )),
        "raft.node" => Request::Admin(match raft_node_command(args) {
            Ok(c) => c,
            Err(reply) => return Request::Immediate(reply),
        }),
        "raft.transfer-leader" => match parse_i64(&args[0]) {
            Some(id) if id >= 1 => Request::Admin(AdminCommand::TransferLeader(id as u64)),
            _ => Request::Immediate(Reply::error("ERR node id must be a positive integer")),
        },
        "select" => match parse_i64(&args[0]) {
            Some(0) => Request::Immediate(Reply::ok()),
            Some(_) => Request::Immediate(Reply::error("ERR DB index is out of range")),
            None => Request::Immediate(not_integer()),
        },
        "client" => Request::Immediate(client_command(args)),
        "quit" => Request::Quit,
        _ => unreachable!("every name in COMMANDS has a branch"),
    }
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
fn command_command(args: &[Bytes]) -> Reply {
    if args.is_empty() {
        return Reply::Array(Vec::new());
    }
    match subcommand(args).as_str() {
        "count" => Reply::Integer(COMMANDS.len() as i64),
        "docs" | "info" => Reply::Array(Vec::new()),
        _ => unknown_subcommand("command", &args[0]),
    }
}

/// Parameters `CONFIG GET` reports, for tools such as redis-benchmark that probe them.
const CONFIG: &[(&str, &str)] = &[("appendonly", "no"), ("databases", "1"), ("save", "")];

fn config_command(args: &[Bytes]) -> Reply {
    match subcommand(args).as_str() {
        "get" if args.len() >= 2 => {
            let mut out = Vec::new();
            for (k, v) in CONFIG {
                if args[1..]
                    .iter()
                    .any(|p| raft_kv_core::glob::matches(&p.to_ascii_lowercase(), k.as_bytes()))
                {
                    out.push(Reply::Bulk(Bytes::from_static(k.as_bytes())));
                    out.push(Reply::Bulk(Bytes::from_static(v.as_bytes())));
                }
            }
            Reply::Array(out)
        }
        "get" => wrong_arity("config|get"),
        _ => unknown_subcommand("config", &args[0]),
    }
}

/// `CLIENT SETNAME/SETINFO` are accepted (client libraries send them on connect).
fn client_command(args: &[Bytes]) -> Reply {
    match subcommand(args).as_str() {
        "setname" | "setinfo" => Reply::ok(),
        _ => unknown_subcommand("client", &args[0]),
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
        assert_eq!(err(p(&["set", "k", "v", "nx"])), "ERR syntax error");
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
            Request::Immediate(Reply::Array(vec![
                Reply::Bulk(Bytes::from_static(b"save")),
                Reply::Bulk(Bytes::from_static(b""))
            ]))
        );
    }
}
