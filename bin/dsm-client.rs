//! `dsm-client`: read and write from the command line, once or interactively.

use std::io::{BufRead, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dsm::client::{Client, Event};
use dsm::master::{DEFAULT_BACKUP_ADDR, DEFAULT_PRIMARY_ADDR};
use dsm::protocol::{Reply, Request};

/// A dsm client. With a command it runs it, prints the server's reply and exits (non-zero on an
/// error); without one it reads commands from the terminal (`READ k`, `WRITE k v`, `DELETE k`,
/// `STATS`, `MEMBERS`, `PING`, `QUIT`).
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// The primary master.
    #[arg(long, default_value = DEFAULT_PRIMARY_ADDR)]
    master: String,
    /// The backup master, tried when the primary is down or not the primary (`none` to disable).
    #[arg(long, default_value = DEFAULT_BACKUP_ADDR)]
    backup: String,
    /// Send `AUTH <password>` on every connection (servers started with --requirepass).
    /// Visible to other users in `ps`: prefer --password-file or DSM_PASSWORD.
    #[arg(long, env = "DSM_PASSWORD", hide_env_values = true, conflicts_with = "password_file")]
    password: Option<String>,
    /// Like --password, with the password read from a file (surrounding whitespace ignored).
    #[arg(long, value_name = "PATH")]
    password_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print `VALUE <version> <value>` or `NOT_FOUND`.
    Read { key: String },
    /// Store a value; prints `OK <version>`.
    Write { key: String, value: String },
    /// Delete a key; prints `OK <version>` or `NOT_FOUND`.
    Delete { key: String },
    /// Print the server's counters.
    Stats,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let backup = (args.backup != "none").then_some(args.backup.as_str());
    let mut client = Client::new(&args.master, backup);
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
    match args.command {
        Some(cmd) => one_shot(&mut client, cmd),
        None => interactive(&mut client),
    }
}

fn one_shot(client: &mut Client, cmd: Cmd) -> ExitCode {
    let request = match cmd {
        Cmd::Read { key } => Request::Read { key },
        Cmd::Write { key, value } => Request::Write { key, value: value.into_bytes() },
        Cmd::Delete { key } => Request::Delete { key },
        Cmd::Stats => Request::Stats,
    };
    // Check locally first, so a bad key is reported without a round trip.
    if let Err(e) = request.validate() {
        eprintln!("error: {e}");
        return ExitCode::from(2);
    }
    let result = client.request(&request);
    report_events(client);
    match result {
        Ok(reply) => {
            print_reply(&reply);
            if matches!(reply, Reply::Err(_)) {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn interactive(client: &mut Client) -> ExitCode {
    let stdin = std::io::stdin();
    let mut role = String::from("?");
    if let Err(e) = client.connect() {
        eprintln!("warning: {e}; will retry on the first command");
    }
    role = refresh_role(client).unwrap_or(role);
    report_events(client);
    loop {
        let prompt = match client.connected_to() {
            Some(addr) => format!("[{role} {addr}]> "),
            None => "[disconnected]> ".to_string(),
        };
        print!("{prompt}");
        let _ = std::io::stdout().flush();
        let mut line = String::new();
        match stdin.lock().read_line(&mut line) {
            Ok(0) => return ExitCode::SUCCESS,
            Ok(_) => {}
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        }
        let line = line.trim_end_matches(['\n', '\r']);
        if line.trim().is_empty() {
            continue;
        }
        let request = match Request::parse(line.as_bytes()) {
            Ok(Request::Quit) => return ExitCode::SUCCESS,
            Ok(r) => r,
            Err(e) => {
                println!("ERR {e}");
                continue;
            }
        };
        let before = client.connected_to().map(str::to_string);
        match client.request(&request) {
            Ok(reply) => print_reply(&reply),
            Err(e) => println!("error: {e}"),
        }
        if client.connected_to().map(str::to_string) != before {
            role = refresh_role(client).unwrap_or_else(|| "?".into());
        }
        report_events(client);
    }
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
}
