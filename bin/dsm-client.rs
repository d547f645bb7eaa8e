//! `dsm-client`: read and write from the command line, once or interactively.

use std::io::{BufRead, IsTerminal, Write};
use std::net::ToSocketAddrs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use dsm::client::{Client, Event};
use dsm::master::{DEFAULT_BACKUP_ADDR, DEFAULT_PRIMARY_ADDR};
use dsm::protocol::{Reply, Request};

/// How long a request that no master can take yet (a takeover in progress) is retried by
/// default, in milliseconds: a takeover takes about a second.
const DEFAULT_WAIT_MS: u64 = 5000;

/// The interactive history file, in the user's home directory.
const HISTORY_FILE: &str = ".dsm_history";

/// What `help` prints in the interactive mode.
const HELP: &str = "\
commands (case-insensitive):
  READ <key>             the value and its version, or NOT_FOUND    (alias GET)
  WRITE <key> <value>    store a value; the value is the rest of the line (aliases SET, PUT)
  DELETE <key>           delete a key                                (alias DEL)
  PING                   is the server there?
  STATS                  the server's counters
  MEMBERS                the slaves and their state
  REMOVE <slave-id>      forget a dead slave for good
  AUTH <password>        authenticate (servers started with --requirepass)
  help                   this text
  QUIT                   leave (Ctrl-D too)
Lines starting with 'ERR' are the server's answers; 'error:' lines are the client's own.";

/// A dsm client. With a command it runs it, prints the server's reply and exits (0 on success,
/// 1 on an error reply or no server, 2 on a usage error); without one it reads commands from
/// the terminal, with history and line editing (`help` lists them), or from standard input.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The primary master (host:port).
    #[arg(long, default_value = DEFAULT_PRIMARY_ADDR, value_parser = parse_addr)]
    master: String,
    /// The backup master, tried when the primary is down or not the primary (`none` to disable).
    #[arg(long, default_value = DEFAULT_BACKUP_ADDR, value_parser = parse_backup)]
    backup: String,
    /// Send `AUTH <password>` on every connection (servers started with --requirepass).
    /// Visible to other users in `ps`: prefer --password-file or DSM_PASSWORD.
    #[arg(long, env = "DSM_PASSWORD", hide_env_values = true, conflicts_with = "password_file")]
    password: Option<String>,
    /// Like --password, with the password read from a file (surrounding whitespace ignored).
    #[arg(long, value_name = "PATH")]
    password_file: Option<PathBuf>,
    /// How long to keep retrying a request that no master can take yet (`ERR UNAVAILABLE`,
    /// `ERR NOTPRIMARY`, no server reachable), as during a takeover. Only requests that
    /// certainly did nothing are retried, so a write is never applied twice.
    #[arg(long, value_name = "MS", default_value_t = DEFAULT_WAIT_MS)]
    wait_ms: u64,
    /// Mass insertion, as `redis-cli --pipe`: protocol lines from standard input, sent
    /// pipelined in large batches (a run of writes is logged and replicated together); prints
    /// a summary (sent, OK, errors) and exits non-zero if any request failed. Replies are not
    /// printed, errors are (with their line number), on standard error.
    #[arg(long)]
    pipe: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print `VALUE <version> <value>` or `NOT_FOUND`.
    #[command(visible_alias = "get")]
    Read { key: String },
    /// Store a value; prints `OK <version>`.
    #[command(visible_alias = "set")]
    Write { key: String, value: String },
    /// Delete a key; prints `OK <version>` or `NOT_FOUND`.
    #[command(visible_alias = "del")]
    Delete { key: String },
    /// Print `PONG` if the server answers.
    Ping,
    /// Print the server's counters.
    Stats,
    /// Print the slaves and their state.
    Members,
}

/// A `host:port` that resolves.
fn parse_addr(text: &str) -> Result<String, String> {
    match text.to_socket_addrs().map(|mut addrs| addrs.next()) {
        Ok(Some(_)) => Ok(text.to_string()),
        Ok(None) => Err(format!("{text} resolves to no address")),
        Err(e) => Err(format!("expected host:port ({e})")),
    }
}

fn parse_backup(text: &str) -> Result<String, String> {
    if text == "none" {
        return Ok(text.to_string());
    }
    parse_addr(text)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let backup = (args.backup != "none").then_some(args.backup.as_str());
    let mut client = Client::new(&args.master, backup);
    client.set_wait(Duration::from_millis(args.wait_ms));
    let password = match (&args.password, &args.password_file) {
        (Some(p), _) => Some(p.as_bytes().to_vec()),
        (None, Some(path)) => match std::fs::read(path) {
            Ok(raw) => Some(raw.trim_ascii().to_vec()),
            Err(e) => {
                eprintln!("error: cannot read the password file {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        (None, None) => None,
    };
    if let Some(password) = password {
        client.set_password(&password);
    }
    if args.pipe {
        if args.command.is_some() {
            eprintln!("error: --pipe reads its commands from standard input; give no command");
            return ExitCode::from(2);
        }
        return pipe(client);
    }
    match args.command {
        Some(cmd) => one_shot(&mut client, cmd),
        None if std::io::stdin().is_terminal() => interactive(&mut client),
        None => piped(&mut client),
    }
}

fn one_shot(client: &mut Client, cmd: Cmd) -> ExitCode {
    let request = match cmd {
        Cmd::Read { key } => Request::Read { key },
        Cmd::Write { key, value } => Request::Write { key, value: value.into_bytes() },
        Cmd::Delete { key } => Request::Delete { key },
        Cmd::Ping => Request::Ping,
        Cmd::Stats => Request::Stats,
        Cmd::Members => Request::Members,
    };
    // Check locally first, so a request the protocol cannot carry is a usage error.
    if let Err(e) = request.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    if run(client, &request) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Sends one request, prints the reply (or the client's error, on stderr) and the failovers it
/// caused; true when it succeeded.
fn run(client: &mut Client, request: &Request) -> bool {
    let result = client.request(request);
    report_events(client);
    match result {
        Ok(reply) => {
            print_reply(&reply);
            !matches!(reply, Reply::Err(_))
        }
        Err(e) => {
            eprintln!("error: {e}");
            false
        }
    }
}

/// What one typed line asks for.
enum Line {
    Nothing,
    Help,
    Quit,
    Send(Request),
    Refused(String),
}

fn parse_line(line: &str) -> Line {
    let line = line.trim_end_matches(['\n', '\r']);
    if line.trim().is_empty() {
        return Line::Nothing;
    }
    if line.trim().eq_ignore_ascii_case("help") {
        return Line::Help;
    }
    match Request::parse(line.as_bytes()) {
        Ok(Request::Quit) => Line::Quit,
        Ok(r) => Line::Send(r),
        Err(e) => Line::Refused(e),
    }
}

/// How many sent requests `--pipe` lets wait for their replies before it stops sending: bounds
/// what the two sides buffer.
const PIPE_IN_FLIGHT: usize = 10_000;

/// `--pipe`: every line of standard input streamed to the server as it is read, the replies
/// read on another thread as they come; a summary at the end.
fn pipe(client: Client) -> ExitCode {
    let (stream, mut replies) = match client.into_stream() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The line number of each request sent, in order, for the reader.
    let (sent_tx, sent_rx) = crossbeam_channel::bounded::<usize>(PIPE_IN_FLIGHT);
    let reader = std::thread::spawn(move || {
        let (mut ok, mut errors) = (0u64, 0u64);
        for number in sent_rx {
            match replies.next_reply() {
                Ok(Reply::Err(e)) => {
                    eprintln!("line {number}: ERR {e}");
                    errors += 1;
                }
                Ok(_) => ok += 1,
                Err(e) => {
                    eprintln!(
                        "error: {e} (at line {number}; the outcome of it and of what follows is unknown)"
                    );
                    return (ok, errors + 1, false);
                }
            }
        }
        (ok, errors, true)
    });
    let (mut sent, mut refused) = (0u64, 0u64);
    let mut out = std::io::BufWriter::with_capacity(1 << 16, &stream);
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let number = i + 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot read standard input: {e}");
                refused += 1;
                break;
            }
        };
        match parse_line(&line) {
            Line::Nothing | Line::Help => {}
            Line::Quit => break,
            Line::Refused(e) => {
                eprintln!("line {number}: error: {e}");
                refused += 1;
            }
            Line::Send(_) => {
                // Checked; sent as written (the server parses it the same way).
                let line = line.trim_end_matches(['\n', '\r']);
                if out.write_all(line.as_bytes()).and_then(|()| out.write_all(b"\r\n")).is_err()
                    || sent_tx.send(number).is_err()
                {
                    break;
                }
                sent += 1;
                // Let the server answer what is buffered while no more input comes.
                if sent % 1000 == 0 && out.flush().is_err() {
                    break;
                }
            }
        }
    }
    let _ = out.flush();
    drop(sent_tx);
    let (ok, errors, complete) = reader.join().unwrap_or((0, sent, false));
    let errors = errors + refused;
    println!("sent {sent}, OK {ok}, errors {errors}");
    if errors == 0 && complete {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Commands from standard input that is not a terminal (a pipe, a file): no prompts, and a
/// non-zero exit when any command failed.
fn piped(client: &mut Client) -> ExitCode {
    let mut failed = false;
    for line in std::io::stdin().lock().lines() {
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot read standard input: {e}");
                return ExitCode::FAILURE;
            }
        };
        match parse_line(&line) {
            Line::Nothing => {}
            Line::Help => println!("{HELP}"),
            Line::Quit => break,
            Line::Send(request) => failed |= !run(client, &request),
            Line::Refused(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The interactive mode on a terminal: line editing, history kept in the user's home.
fn interactive(client: &mut Client) -> ExitCode {
    let mut editor = match rustyline::DefaultEditor::new() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: cannot use the terminal ({e}); reading commands without line editing");
            return piped(client);
        }
    };
    let history = std::env::var_os("HOME").map(|home| PathBuf::from(home).join(HISTORY_FILE));
    if let Some(path) = &history {
        // A first run has no history yet.
        let _ = editor.load_history(path);
    }
    println!("dsm-client {}: type 'help' for the commands, Ctrl-D to leave", env!("CARGO_PKG_VERSION"));
    if let Err(e) = client.connect() {
        eprintln!("error: {e}; will retry on the first command");
    }
    let mut role = refresh_role(client).unwrap_or_else(|| "?".into());
    report_events(client);
    loop {
        let prompt = match client.connected_to() {
            Some(addr) => format!("[{role} {addr}]> "),
            None => "[disconnected]> ".to_string(),
        };
        let line = match editor.readline(&prompt) {
            Ok(line) => line,
            Err(rustyline::error::ReadlineError::Eof | rustyline::error::ReadlineError::Interrupted) => break,
            Err(e) => {
                eprintln!("error: {e}");
                break;
            }
        };
        if !line.trim().is_empty() {
            let _ = editor.add_history_entry(line.as_str());
        }
        match parse_line(&line) {
            Line::Nothing => continue,
            Line::Help => println!("{HELP}"),
            Line::Quit => break,
            Line::Refused(e) => eprintln!("error: {e} (type 'help' for the commands)"),
            Line::Send(request) => {
                let before = client.connected_to().map(str::to_string);
                run(client, &request);
                if client.connected_to().map(str::to_string) != before {
                    role = refresh_role(client).unwrap_or_else(|| "?".into());
                }
            }
        }
    }
    if let Some(path) = &history {
        if let Err(e) = editor.save_history(path) {
            eprintln!("warning: cannot save the history in {}: {e}", path.display());
        }
    }
    ExitCode::SUCCESS
}

fn refresh_role(client: &mut Client) -> Option<String> {
    client.connected_to()?;
    let rows = client.stats().ok()?;
    rows.into_iter().find(|(k, _)| k == "role").map(|(_, v)| v)
}

fn report_events(client: &mut Client) {
    for event in client.take_events() {
        if let Event::FailedOver { from, to, why } = event {
            eprintln!("note: failed over from {from} to {to} ({why})");
        }
    }
}

fn print_reply(reply: &Reply) {
    let mut out = std::io::stdout().lock();
    let wire = reply.encode();
    // The server's own words, with its \r\n line ends made local.
    let text = String::from_utf8_lossy(&wire).replace("\r\n", "\n");
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
}
