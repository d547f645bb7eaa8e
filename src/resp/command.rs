//! The Redis commands dsm answers, parsed from a RESP request's bulk strings. No sockets, no
//! store: what each command does is the master's (`master::session`).
//!
//! ```text
//! PING [message]              +PONG | $message
//! ECHO message                $message
//! GET key                     $value | $-1
//! SET key value               +OK                  (after a majority acknowledged it)
//! DEL key [key ...]           :deleted
//! EXISTS key [key ...]        :present
//! MGET key [key ...]          *n of $value | $-1
//! MSET key value [key value ...]   +OK             (each key its own write; not atomic)
//! DBSIZE                      :keys
//! INFO [section ...]          $text                (server, replication, keyspace, dsm)
//! AUTH [user] password        +OK | -WRONGPASS
//! HELLO [2 [AUTH user pass] [SETNAME name]]   *map | -NOPROTO for 3
//! CLIENT SETNAME|GETNAME|SETINFO|ID|INFO
//! SELECT 0                    +OK
//! COMMAND [COUNT|DOCS|INFO]   *...
//! CONFIG GET pattern ...      *n of name, value    (the few parameters in `CONFIG`)
//! BGREWRITEAOF                +...                 (compacts the log, like COMPACT)
//! DSM.VERSION key             :version | $-1       (the key's version, as READ shows it)
//! QUIT                        +OK, then the server closes
//! ```
//!
//! Names are case-insensitive. Wrong arity is `-ERR wrong number of arguments for '<name>'
//! command` and an unknown name `-ERR unknown command '<name>', with args beginning with: ...`,
//! as Redis answers. Keys must be what dsm keys are (`crate::wire::check_key`: 1 to 250 bytes
//! of UTF-8 without whitespace); values may hold any byte.

use crate::wire::{check_key, truncate_for_display};

/// A parsed RESP request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `PING [message]`.
    Ping(Option<Vec<u8>>),
    /// `ECHO message`.
    Echo(Vec<u8>),
    /// `GET key`.
    Get(String),
    /// `SET key value`.
    Set { key: String, value: Vec<u8> },
    /// `DEL key [key ...]`.
    Del(Vec<String>),
    /// `EXISTS key [key ...]`.
    Exists(Vec<String>),
    /// `MGET key [key ...]`.
    MGet(Vec<String>),
    /// `MSET key value [key value ...]`.
    MSet(Vec<(String, Vec<u8>)>),
    /// `DBSIZE`.
    DbSize,
    /// `INFO [section ...]`, sections lower-cased (none: the default ones).
    Info(Vec<String>),
    /// `AUTH [user] password`.
    Auth { user: Option<Vec<u8>>, password: Vec<u8> },
    /// `HELLO [protover [AUTH user password] [SETNAME name]]`.
    Hello { protocol: Option<u64>, auth: Option<(Vec<u8>, Vec<u8>)>, name: Option<String> },
    /// `CLIENT SETNAME name`.
    ClientSetName(String),
    /// `CLIENT GETNAME`.
    ClientGetName,
    /// `CLIENT ID`.
    ClientId,
    /// `CLIENT INFO`.
    ClientInfo,
    /// `CLIENT SETINFO LIB-NAME|LIB-VER value`: accepted, and forgotten.
    ClientSetInfo,
    /// `SELECT index`: only database 0 exists.
    Select(i64),
    /// `COMMAND`, `COMMAND COUNT`, `COMMAND DOCS ...`, `COMMAND INFO name ...`.
    Command(CommandQuery),
    /// `CONFIG GET pattern ...`, patterns lower-cased.
    ConfigGet(Vec<String>),
    /// `BGREWRITEAOF`: compact the log in the background.
    Compact,
    /// `DSM.VERSION key`.
    Version(String),
    /// `QUIT`.
    Quit,
}

/// What `COMMAND` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandQuery {
    /// `COMMAND`: every command.
    All,
    /// `COMMAND COUNT`.
    Count,
    /// `COMMAND DOCS [name ...]`.
    Docs,
    /// `COMMAND INFO name ...`, names lower-cased.
    Info(Vec<String>),
}

/// One row of the command table: name, arity as Redis counts it (negative: at least that
/// many), flags, and the first, last and step of its key arguments.
pub struct Spec {
    /// Lower-case name.
    pub name: &'static str,
    /// Arguments including the name; negative for "at least".
    pub arity: i64,
    /// Redis's command flags.
    pub flags: &'static [&'static str],
    /// First key argument (0: none).
    pub first_key: i64,
    /// Last key argument (-1: the last argument).
    pub last_key: i64,
    /// Step between key arguments.
    pub step: i64,
}

const fn spec(name: &'static str, arity: i64, flags: &'static [&'static str], keys: (i64, i64, i64)) -> Spec {
    Spec { name, arity, flags, first_key: keys.0, last_key: keys.1, step: keys.2 }
}

/// Every command dsm answers over RESP, for `COMMAND` and the arity checks.
pub const COMMANDS: &[Spec] = &[
    spec("ping", -1, &["fast", "stale"], (0, 0, 0)),
    spec("echo", 2, &["fast", "stale"], (0, 0, 0)),
    spec("get", 2, &["readonly", "fast"], (1, 1, 1)),
    spec("set", -3, &["write", "denyoom"], (1, 1, 1)),
    spec("del", -2, &["write"], (1, -1, 1)),
    spec("exists", -2, &["readonly", "fast"], (1, -1, 1)),
    spec("mget", -2, &["readonly", "fast"], (1, -1, 1)),
    spec("mset", -3, &["write", "denyoom"], (1, -1, 2)),
    spec("dbsize", 1, &["readonly", "fast"], (0, 0, 0)),
    spec("info", -1, &["loading", "stale"], (0, 0, 0)),
    spec("auth", -2, &["noscript", "loading", "stale", "fast", "no_auth"], (0, 0, 0)),
    spec("hello", -1, &["noscript", "loading", "stale", "fast", "no_auth"], (0, 0, 0)),
    spec("client", -2, &["loading", "stale"], (0, 0, 0)),
    spec("select", 2, &["loading", "stale", "fast"], (0, 0, 0)),
    spec("command", -1, &["loading", "stale"], (0, 0, 0)),
    spec("config", -2, &["admin", "loading", "stale"], (0, 0, 0)),
    spec("bgrewriteaof", 1, &["admin", "noscript"], (0, 0, 0)),
    spec("dsm.version", 2, &["readonly", "fast"], (1, 1, 1)),
    spec("quit", -1, &["fast", "no_auth"], (0, 0, 0)),
];

/// The configuration parameters `CONFIG GET` shows, with the values that describe dsm: the
/// ones Redis tools ask about (`redis-benchmark` asks for `save` and `appendonly`, and warns
/// when it gets no answer). dsm takes no snapshots (`save` is empty) and writes every change
/// to its append-only log before acknowledging it (`appendonly` is `yes`).
pub const CONFIG: &[(&str, &str)] = &[("save", ""), ("appendonly", "yes")];

/// The parameters of [`CONFIG`] that any of `patterns` (lower-cased) matches, each once, in
/// the table's order: what `CONFIG GET` answers.
pub fn config_get(patterns: &[String]) -> Vec<(&'static str, &'static str)> {
    CONFIG
        .iter()
        .filter(|(name, _)| patterns.iter().any(|p| glob_match(p.as_bytes(), name.as_bytes())))
        .copied()
        .collect()
}

/// Whether `name` matches the glob `pattern` as Redis's `CONFIG GET` reads it, in part: `*`
/// is any run of bytes, `?` any one byte, every other byte itself (no `[...]` classes or `\`
/// escapes, which no parameter name needs).
fn glob_match(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    // The last `*` seen and where in `name` its match currently ends, to backtrack to.
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
            }
            Some(&c) if c == b'?' || c == name[n] => {
                p += 1;
                n += 1;
            }
            _ => match star {
                Some((at, matched)) => {
                    star = Some((at, matched + 1));
                    p = at + 1;
                    n = matched + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

impl Command {
    /// Parses a request (its first element is the command name); the error is the text of a
    /// RESP error reply, code included (`ERR ...`).
    pub fn parse(args: Vec<Vec<u8>>) -> Result<Command, String> {
        let mut args = args.into_iter();
        let Some(name) = args.next() else {
            return Err("ERR empty command".into());
        };
        let lower = String::from_utf8_lossy(&name).to_lowercase();
        let args: Vec<Vec<u8>> = args.collect();
        let Some(spec) = COMMANDS.iter().find(|s| s.name == lower) else {
            let mut shown = String::new();
            for arg in args.iter().take(8) {
                shown.push_str(&format!("'{}' ", truncate_for_display(arg)));
            }
            return Err(format!(
                "ERR unknown command '{}', with args beginning with: {shown}",
                truncate_for_display(&name)
            ));
        };
        let n = args.len() as i64 + 1;
        if (spec.arity > 0 && n != spec.arity) || (spec.arity < 0 && n < -spec.arity) {
            return Err(arity(&lower));
        }
        let key = |a: &[u8]| -> Result<String, String> {
            check_key(a).map_err(|e| format!("ERR {e}"))?;
            Ok(String::from_utf8_lossy(a).into_owned())
        };
        let keys = |list: &[Vec<u8>]| list.iter().map(|a| key(a)).collect::<Result<Vec<_>, _>>();
        let mut args = args;
        Ok(match lower.as_str() {
            "ping" if args.len() > 1 => return Err(arity(&lower)),
            "ping" => Command::Ping(args.pop()),
            "echo" => Command::Echo(args.remove(0)),
            "get" => Command::Get(key(&args[0])?),
            "set" => {
                if let Some(option) = args.get(2) {
                    return Err(set_option(option));
                }
                let value = args.pop().unwrap_or_default();
                check_value(&value)?;
                Command::Set { key: key(&args[0])?, value }
            }
            "del" => Command::Del(keys(&args)?),
            "exists" => Command::Exists(keys(&args)?),
            "mget" => Command::MGet(keys(&args)?),
            "mset" => {
                if !args.len().is_multiple_of(2) {
                    return Err(arity(&lower));
                }
                let mut pairs = Vec::with_capacity(args.len() / 2);
                let mut it = args.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    check_value(&v)?;
                    pairs.push((key(&k)?, v));
                }
                Command::MSet(pairs)
            }
            "dbsize" => Command::DbSize,
            "info" => Command::Info(args.iter().map(|a| String::from_utf8_lossy(a).to_lowercase()).collect()),
            "auth" if args.len() > 2 => return Err("ERR syntax error".into()),
            "auth" => {
                let password = args.pop().unwrap_or_default();
                Command::Auth { user: args.pop(), password }
            }
            "hello" => parse_hello(args)?,
            "client" => parse_client(args)?,
            "select" => {
                let index = std::str::from_utf8(&args[0])
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .ok_or("ERR value is not an integer or out of range")?;
                Command::Select(index)
            }
            "command" => Command::Command(match args.first().map(|a| a.to_ascii_uppercase()) {
                None => CommandQuery::All,
                Some(sub) if sub == b"COUNT" => CommandQuery::Count,
                Some(sub) if sub == b"DOCS" => CommandQuery::Docs,
                Some(sub) if sub == b"INFO" => CommandQuery::Info(
                    args[1..].iter().map(|a| String::from_utf8_lossy(a).to_lowercase()).collect(),
                ),
                Some(sub) => return Err(unknown_subcommand(&sub, "COMMAND")),
            }),
            "config" => match args[0].to_ascii_uppercase().as_slice() {
                b"GET" if args.len() >= 2 => Command::ConfigGet(
                    args[1..].iter().map(|a| String::from_utf8_lossy(a).to_lowercase()).collect(),
                ),
                b"GET" => return Err(arity("config|get")),
                other => return Err(unknown_subcommand(other, "CONFIG")),
            },
            "bgrewriteaof" => Command::Compact,
            "dsm.version" => Command::Version(key(&args[0])?),
            "quit" => Command::Quit,
            _ => return Err(format!("ERR unknown command '{lower}'")),
        })
    }

    /// The key and value of a `SET`, the command a pipelined run of writes is made of.
    pub fn into_write(self) -> Option<(String, Vec<u8>)> {
        match self {
            Command::Set { key, value } => Some((key, value)),
            _ => None,
        }
    }

    /// True for the commands an unauthenticated connection may send (`--requirepass`).
    pub fn allowed_before_auth(&self) -> bool {
        matches!(self, Command::Auth { .. } | Command::Hello { .. } | Command::Quit)
    }
}

fn arity(name: &str) -> String {
    format!("ERR wrong number of arguments for '{name}' command")
}

fn unknown_subcommand(sub: &[u8], command: &str) -> String {
    format!(
        "ERR unknown subcommand '{}'. Try {command} HELP.",
        truncate_for_display(&sub.to_ascii_lowercase())
    )
}

/// The error for a `SET` option: dsm keeps no expiry and has no conditional write, so each is
/// refused by name rather than ignored.
fn set_option(option: &[u8]) -> String {
    let upper = option.to_ascii_uppercase();
    let name = truncate_for_display(&upper);
    match upper.as_slice() {
        b"EX" | b"PX" | b"EXAT" | b"PXAT" | b"KEEPTTL" => {
            format!("ERR SET option '{name}' is not supported: dsm keys do not expire")
        }
        b"NX" | b"XX" => {
            format!("ERR SET option '{name}' is not supported: dsm has no conditional writes")
        }
        b"GET" => format!("ERR SET option '{name}' is not supported: read the old value with GET first"),
        _ => "ERR syntax error".to_string(),
    }
}

fn check_value(value: &[u8]) -> Result<(), String> {
    crate::protocol::check_value(value).map_err(|e| format!("ERR {e}"))
}

fn parse_hello(args: Vec<Vec<u8>>) -> Result<Command, String> {
    let mut it = args.into_iter();
    let protocol = match it.next() {
        None => None,
        Some(p) => Some(
            std::str::from_utf8(&p)
                .ok()
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or("ERR Protocol version is not an integer or out of range")?,
        ),
    };
    let (mut auth, mut name) = (None, None);
    while let Some(option) = it.next() {
        match option.to_ascii_uppercase().as_slice() {
            b"AUTH" => match (it.next(), it.next()) {
                (Some(user), Some(password)) => auth = Some((user, password)),
                _ => return Err("ERR Syntax error in HELLO option 'auth'".into()),
            },
            b"SETNAME" => match it.next() {
                Some(n) => name = Some(client_name(&n)?),
                None => return Err("ERR Syntax error in HELLO option 'setname'".into()),
            },
            other => {
                return Err(format!("ERR Syntax error in HELLO option '{}'", truncate_for_display(other)))
            }
        }
    }
    Ok(Command::Hello { protocol, auth, name })
}

fn parse_client(args: Vec<Vec<u8>>) -> Result<Command, String> {
    let sub = args[0].to_ascii_uppercase();
    let n = args.len();
    Ok(match sub.as_slice() {
        b"SETNAME" if n == 2 => Command::ClientSetName(client_name(&args[1])?),
        b"GETNAME" if n == 1 => Command::ClientGetName,
        b"ID" if n == 1 => Command::ClientId,
        b"INFO" if n == 1 => Command::ClientInfo,
        b"SETINFO" if n == 3 => {
            let attr = args[1].to_ascii_lowercase();
            if attr != b"lib-name" && attr != b"lib-ver" {
                return Err(format!("ERR Unrecognized option '{}'", truncate_for_display(&args[1])));
            }
            Command::ClientSetInfo
        }
        b"SETNAME" | b"GETNAME" | b"ID" | b"INFO" | b"SETINFO" => {
            return Err(arity(&format!("client|{}", String::from_utf8_lossy(&sub).to_lowercase())))
        }
        other => return Err(unknown_subcommand(other, "CLIENT")),
    })
}

/// A connection name: no spaces, line breaks or other special characters, as Redis demands.
fn client_name(name: &[u8]) -> Result<String, String> {
    if name.iter().any(|&b| b <= b' ' || b >= 0x7f) {
        return Err("ERR Client names cannot contain spaces, newlines or special characters.".into());
    }
    Ok(String::from_utf8_lossy(name).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(words: &[&str]) -> Result<Command, String> {
        Command::parse(words.iter().map(|w| w.as_bytes().to_vec()).collect())
    }

    #[test]
    fn parses_the_commands_a_redis_client_sends() {
        assert_eq!(parse(&["set", "k", "v w"]), Ok(Command::Set { key: "k".into(), value: b"v w".to_vec() }));
        assert_eq!(parse(&["GET", "k"]), Ok(Command::Get("k".into())));
        assert_eq!(parse(&["PING"]), Ok(Command::Ping(None)));
        assert_eq!(parse(&["ping", "hi"]), Ok(Command::Ping(Some(b"hi".to_vec()))));
        assert_eq!(parse(&["DEL", "a", "b"]), Ok(Command::Del(vec!["a".into(), "b".into()])));
        assert_eq!(
            parse(&["MSET", "a", "1", "b", "2"]),
            Ok(Command::MSet(vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())]))
        );
        assert_eq!(parse(&["auth", "pw"]), Ok(Command::Auth { user: None, password: b"pw".to_vec() }));
        assert_eq!(
            parse(&["AUTH", "default", "pw"]),
            Ok(Command::Auth { user: Some(b"default".to_vec()), password: b"pw".to_vec() })
        );
        assert_eq!(
            parse(&["HELLO", "3", "AUTH", "u", "p", "SETNAME", "me"]),
            Ok(Command::Hello {
                protocol: Some(3),
                auth: Some((b"u".to_vec(), b"p".to_vec())),
                name: Some("me".into())
            })
        );
        assert_eq!(parse(&["client", "setinfo", "LIB-NAME", "redis-rs"]), Ok(Command::ClientSetInfo));
        assert_eq!(parse(&["CLIENT", "SETINFO", "lib-ver", "1.8.2"]), Ok(Command::ClientSetInfo));
        assert_eq!(parse(&["SELECT", "-1"]), Ok(Command::Select(-1)));
        assert_eq!(
            parse(&["CONFIG", "get", "Save", "append*"]),
            Ok(Command::ConfigGet(vec!["save".into(), "append*".into()]))
        );
        assert_eq!(parse(&["COMMAND", "DOCS"]), Ok(Command::Command(CommandQuery::Docs)));
        assert_eq!(parse(&["dsm.version", "k"]), Ok(Command::Version("k".into())));
        assert_eq!(parse(&["INFO", "Replication"]), Ok(Command::Info(vec!["replication".into()])));
    }

    #[test]
    fn errors_read_as_redis_writes_them() {
        assert_eq!(parse(&["get"]), Err("ERR wrong number of arguments for 'get' command".into()));
        assert_eq!(parse(&["get", "a", "b"]), Err("ERR wrong number of arguments for 'get' command".into()));
        assert_eq!(parse(&["MSET", "a"]), Err("ERR wrong number of arguments for 'mset' command".into()));
        assert_eq!(
            parse(&["MSET", "a", "1", "b"]),
            Err("ERR wrong number of arguments for 'mset' command".into())
        );
        assert_eq!(
            parse(&["FLUSHALL", "x"]),
            Err("ERR unknown command 'FLUSHALL', with args beginning with: 'x' ".into())
        );
        for (option, why) in
            [("EX", "do not expire"), ("nx", "conditional"), ("KEEPTTL", "expire"), ("GET", "GET")]
        {
            let e = parse(&["SET", "k", "v", option, "10"]).unwrap_err();
            assert!(e.contains(&format!("'{}'", option.to_uppercase())) && e.contains(why), "{e}");
        }
        assert_eq!(parse(&["SET", "k", "v", "BOGUS"]), Err("ERR syntax error".into()));
        assert_eq!(parse(&["GET", "a b"]), Err("ERR key contains whitespace or control bytes".into()));
        assert!(parse(&["CLIENT", "SETNAME", "a b"]).unwrap_err().contains("cannot contain spaces"));
        assert!(parse(&["CLIENT", "KILL"]).unwrap_err().starts_with("ERR unknown subcommand 'kill'"));
        assert!(parse(&["SELECT", "x"]).unwrap_err().contains("not an integer"));
        assert_eq!(
            parse(&["CLIENT", "SETINFO", "Lib-Foo", "x"]),
            Err("ERR Unrecognized option 'Lib-Foo'".into())
        );
        let long = "v".repeat(crate::limits::MAX_VALUE + 1);
        assert!(parse(&["SET", "k", &long]).unwrap_err().starts_with("ERR value too long"));
    }

    #[test]
    fn config_get_matches_names_and_globs() {
        let get = |patterns: &[&str]| config_get(&patterns.iter().map(|p| p.to_string()).collect::<Vec<_>>());
        assert_eq!(get(&["save"]), [("save", "")]);
        assert_eq!(get(&["appendonly"]), [("appendonly", "yes")]);
        assert_eq!(get(&["*"]), CONFIG);
        // Each parameter once, however many patterns match it.
        assert_eq!(get(&["appendonly", "save", "*"]), CONFIG);
        assert_eq!(get(&["append*"]), [("appendonly", "yes")]);
        assert_eq!(get(&["s?ve", "*only"]), CONFIG);
        assert!(get(&["maxmemory"]).is_empty());
        assert!(get(&["sav"]).is_empty());
        assert!(get(&["saved"]).is_empty());
        for (pattern, name, want) in [
            ("*a*e*", "appendonly", true),
            ("*y*a*", "appendonly", false),
            ("*a*e*", "save", true),
            ("**", "", true),
            ("?", "", false),
            ("a*d*y", "appendonly", true),
            ("a*d*x", "appendonly", false),
        ] {
            assert_eq!(glob_match(pattern.as_bytes(), name.as_bytes()), want, "{pattern} {name}");
        }
    }

    #[test]
    fn the_table_and_the_parser_agree() {
        for spec in COMMANDS {
            // Every command in the table is parsed (never "unknown"), whatever its arguments.
            let mut words = vec![spec.name.to_string()];
            words.extend(std::iter::repeat_n("k".to_string(), spec.arity.unsigned_abs() as usize - 1));
            let got = Command::parse(words.iter().map(|w| w.as_bytes().to_vec()).collect());
            assert!(!matches!(&got, Err(e) if e.contains("unknown command")), "{}: {got:?}", spec.name);
        }
    }
}
