//! Authentication: the cluster secret that slaves and masters prove they know, and the optional
//! client password.
//!
//! # Peers: a challenge–response on the cluster secret
//!
//! With `--secret-file PATH`, every peer connection — a slave registering, a backup streaming the
//! primary's log (`STREAM`), a master asking the other to hand off (`HANDOFF`) — starts with a
//! mutual challenge–response before the server acts on anything. Without a secret the wire
//! format is the one in [`crate::peer`] and [`crate::master::replica`], unchanged.
//!
//! ```text
//! peer   -> server   <first line>            SLAVE <id> <epoch> <max-seq> | STREAM | HANDOFF
//! server -> peer     CHALLENGE <ns>          ns: 16 fresh random bytes, 32 lower-case hex digits
//! peer   -> server   PROOF <np> <mp>         np: 16 fresh random bytes; mp: the peer's MAC
//! server -> peer     PROOF <ms>              ms: the server's MAC          (or ERR <reason>, close)
//! ...                                        then the usual protocol: WELCOME <epoch>, the log
//!                                            stream, or HANDOFF <seq> <epoch>
//! ```
//!
//! Both MACs are HMAC-SHA-256 under the secret, in 64 lower-case hex digits, over
//!
//! ```text
//! "dsm-auth-v1" 0x00 <side> 0x00 <role> 0x00 <id> 0x00 <ns> 0x00 <np>
//! ```
//!
//! where `<side>` is `peer` for `mp` and `server` for `ms`, `<role>` is `slave`, `stream` or
//! `handoff`, `<id>` is the slave id (`-` for the master-to-master roles), and the nonces are
//! their hex text. Why this shape:
//!
//! - The secret never crosses the wire; only MACs do.
//! - The server's nonce is fresh for each connection, so a recorded `PROOF` is worthless on
//!   any other connection (no replay). The peer's nonce does the same for the server's answer.
//! - The role and the id are inside the MAC, so a proof for slave `s1` cannot register `s2`, and
//!   a proof for `STREAM` cannot start a `HANDOFF`.
//! - The side is inside the MAC, so an impostor server cannot bounce a peer's challenge back to
//!   it and use its answer (no reflection).
//! - It is mutual: a peer checks `ms` before it believes anything the server says, so a slave
//!   never joins, and a backup never applies a log from, a server that does not know the
//!   secret. A peer with a secret refuses a server that does not ask for a proof.
//! - MACs are compared in constant time ([`Mac::verify_slice`]).
//!
//! A wrong, malformed or missing proof is logged by the server, answered `ERR auth failed:
//! <why>` and the connection closed. The server waits at most [`AUTH_TIMEOUT`] for the proof, so
//! a peer that stalls mid-handshake holds no thread for long.
//!
//! What this does *not* give (see `docs/SECURITY.md`): confidentiality or integrity after the
//! handshake. There is no TLS; a network attacker can read and alter the traffic that follows.
//!
//! # Clients: `AUTH <password>`
//!
//! With `--requirepass`, a client connection must send `AUTH <password>` before anything but
//! `AUTH`, `PING` and `QUIT`; other requests get `ERR NOAUTH authentication required`, a wrong
//! password `ERR invalid password`. [`Password::check`] compares SHA-256 digests in constant
//! time, so neither the content nor the length of the password leaks through timing.

use std::fmt;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::framing::{LineError, LineReader};
use crate::protocol::truncate_for_display;
use crate::{Error, Result};

/// How long a server waits for a peer's `PROOF` (and a peer for the server's answers). A peer
/// that has not completed the handshake by then is refused and its connection closed, so a
/// half-open registration holds a connection slot and a thread for at most this long.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(5);

/// The shortest secret accepted, in bytes. Shorter secrets are refused at start: a MAC is only
/// as strong as the secret an attacker would have to guess.
pub const MIN_SECRET_LEN: usize = 16;

/// The longest secret or password accepted, in bytes: far more than any real one needs.
pub const MAX_SECRET_LEN: usize = 4096;

/// The length of each nonce, in bytes (sent as twice as many hex digits).
pub const NONCE_LEN: usize = 16;

/// The length of a MAC, in bytes (HMAC-SHA-256).
const MAC_LEN: usize = 32;

/// The domain-separation prefix of every MAC input; a new handshake version changes it.
const DOMAIN: &[u8] = b"dsm-auth-v1";

/// The id used in the MAC of the master-to-master roles, which name no member.
pub const MASTER_ID: &str = "-";

type HmacSha256 = Hmac<Sha256>;

/// The cluster secret. Its `Debug` form does not show it.
#[derive(Clone)]
pub struct Secret(Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

impl Secret {
    /// A secret from its bytes: [`MIN_SECRET_LEN`] to [`MAX_SECRET_LEN`] of them.
    pub fn new(bytes: &[u8]) -> Result<Secret> {
        if bytes.len() < MIN_SECRET_LEN || bytes.len() > MAX_SECRET_LEN {
            return Err(Error::Config(format!(
                "the secret must be {MIN_SECRET_LEN} to {MAX_SECRET_LEN} bytes (it is {}); \
                 make one with: head -c 32 /dev/urandom | base64 > secret",
                bytes.len()
            )));
        }
        Ok(Secret(bytes.to_vec()))
    }

    /// Reads the secret from `path`; surrounding whitespace (a trailing newline) is dropped. Warns
    /// when the file can be read by other users.
    pub fn from_file(path: &Path) -> Result<Secret> {
        let raw = std::fs::read(path)
            .map_err(|e| Error::Config(format!("cannot read the secret file {}: {e}", path.display())))?;
        warn_if_readable_by_others(path);
        Secret::new(raw.trim_ascii())
            .map_err(|e| Error::Config(format!("secret file {}: {}", path.display(), strip_config(&e))))
    }

    fn mac(&self, side: &str, role: PeerRole, id: &str, server_nonce: &str, peer_nonce: &str) -> HmacSha256 {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match HmacSha256::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        for part in [DOMAIN, side.as_bytes(), role.name().as_bytes(), id.as_bytes(), server_nonce.as_bytes()]
        {
            mac.update(part);
            mac.update(&[0]);
        }
        mac.update(peer_nonce.as_bytes());
        mac
    }

    /// The MAC, as hex, that `side` (`"peer"` or `"server"`) sends.
    fn mac_hex(&self, side: &str, role: PeerRole, id: &str, server_nonce: &str, peer_nonce: &str) -> String {
        hex(&self.mac(side, role, id, server_nonce, peer_nonce).finalize().into_bytes())
    }

    /// Checks a MAC received as hex, in constant time.
    fn verify(&self, side: &str, role: PeerRole, id: &str, ns: &str, np: &str, got_hex: &str) -> bool {
        match unhex(got_hex) {
            Some(got) if got.len() == MAC_LEN => self.mac(side, role, id, ns, np).verify_slice(&got).is_ok(),
            _ => false,
        }
    }
}

fn strip_config(e: &Error) -> String {
    match e {
        Error::Config(m) => m.clone(),
        other => other.to_string(),
    }
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            log::warn!(
                "the secret file {} can be read by other users (mode {:o}); run: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// The `--secret-file` flag, shared by `dsm-master`, `dsm-backup` and `dsm-slave`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SecretArgs {
    /// File holding the cluster secret (16 to 4096 bytes; surrounding whitespace is ignored).
    /// Every master and slave of a cluster must use the same one; peers then prove they know it
    /// when they connect (see docs/SECURITY.md). Keep it `chmod 600`.
    #[arg(long, value_name = "PATH")]
    pub secret_file: Option<std::path::PathBuf>,
}

impl SecretArgs {
    /// The secret, read from its file; `None` without the flag.
    pub fn load(&self) -> Result<Option<Secret>> {
        self.secret_file.as_deref().map(Secret::from_file).transpose()
    }
}

/// The `--requirepass` and `--requirepass-file` flags of `dsm-master` and `dsm-backup`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct PasswordArgs {
    /// Clients must send `AUTH <password>` first. Visible to other users in `ps`: prefer
    /// --requirepass-file. The primary and the backup must use the same password.
    #[arg(long, value_name = "PASSWORD", conflicts_with = "requirepass_file")]
    pub requirepass: Option<String>,
    /// Like --requirepass, with the password read from a file (surrounding whitespace ignored).
    #[arg(long, value_name = "PATH")]
    pub requirepass_file: Option<std::path::PathBuf>,
}

impl PasswordArgs {
    /// The password, if one was given.
    pub fn load(&self) -> Result<Option<Password>> {
        match (&self.requirepass, &self.requirepass_file) {
            (Some(p), _) => Password::new(p.as_bytes()).map(Some),
            (None, Some(path)) => Password::from_file(path).map(Some),
            (None, None) => Ok(None),
        }
    }
}

/// Logs a warning when a server listens on a non-loopback address without a cluster secret:
/// then anyone who can reach the port can register a slave, follow the log, or make a primary
/// hand off.
pub fn warn_if_exposed(addr: std::net::SocketAddr, has_secret: bool) {
    if !has_secret && !addr.ip().is_loopback() {
        log::warn!(
            "listening on {addr}, which is not a loopback address, without --secret-file: anyone who \
             can reach it can register as a slave, read the log stream, or make this master hand off; \
             see docs/SECURITY.md"
        );
    }
}

/// What a peer connection is for; part of every MAC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRole {
    /// A slave registering (`SLAVE ...`).
    Slave,
    /// A master following another's log (`STREAM`).
    Stream,
    /// A master asking another to hand off (`HANDOFF`).
    Handoff,
}

impl PeerRole {
    /// The name inside the MAC.
    pub fn name(self) -> &'static str {
        match self {
            PeerRole::Slave => "slave",
            PeerRole::Stream => "stream",
            PeerRole::Handoff => "handoff",
        }
    }
}

/// A fresh random nonce, as hex, from the operating system's generator.
pub fn fresh_nonce() -> String {
    let mut bytes = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex(&bytes)
}

/// The server's side of one handshake, without sockets: it makes the challenge, checks the
/// peer's proof, and makes its own.
#[derive(Debug)]
pub struct ServerHandshake<'a> {
    secret: &'a Secret,
    role: PeerRole,
    id: String,
    nonce: String,
}

impl<'a> ServerHandshake<'a> {
    /// A handshake for `role` and `id`, with the server nonce `nonce` (use [`fresh_nonce`]).
    pub fn new(secret: &'a Secret, role: PeerRole, id: &str, nonce: String) -> Self {
        ServerHandshake { secret, role, id: id.to_string(), nonce }
    }

    /// The `CHALLENGE <ns>` line, without terminator.
    pub fn challenge(&self) -> String {
        format!("CHALLENGE {}", self.nonce)
    }

    /// Checks the peer's `PROOF <np> <mp>` line; on success, the server's `PROOF <ms>` line.
    pub fn check(&self, line: &[u8]) -> std::result::Result<String, String> {
        let text = std::str::from_utf8(line).map_err(|_| "the proof is not UTF-8".to_string())?;
        let fields: Vec<&str> = text.split(' ').collect();
        let [word, np, mp] = fields.as_slice() else {
            return Err(format!("expected PROOF <nonce> <mac>, got '{}'", truncate_for_display(line)));
        };
        if *word != "PROOF" {
            return Err(format!("expected PROOF <nonce> <mac>, got '{}'", truncate_for_display(line)));
        }
        if !is_nonce(np) {
            return Err(format!("the peer nonce must be {} hex digits", NONCE_LEN * 2));
        }
        if *np == self.nonce {
            return Err("the peer nonce repeats the challenge".to_string());
        }
        if !self.secret.verify("peer", self.role, &self.id, &self.nonce, np, mp) {
            return Err("wrong proof: the peer does not know the cluster secret".to_string());
        }
        Ok(format!("PROOF {}", self.secret.mac_hex("server", self.role, &self.id, &self.nonce, np)))
    }
}

/// The peer's side of one handshake, without sockets.
#[derive(Debug)]
pub struct PeerHandshake<'a> {
    secret: &'a Secret,
    role: PeerRole,
    id: String,
    nonce: String,
    server_nonce: Option<String>,
}

impl<'a> PeerHandshake<'a> {
    /// A handshake for `role` and `id`, with the peer nonce `nonce` (use [`fresh_nonce`]).
    pub fn new(secret: &'a Secret, role: PeerRole, id: &str, nonce: String) -> Self {
        PeerHandshake { secret, role, id: id.to_string(), nonce, server_nonce: None }
    }

    /// Answers the server's first line, which must be `CHALLENGE <ns>`, with `PROOF <np> <mp>`.
    pub fn answer(&mut self, line: &[u8]) -> std::result::Result<String, String> {
        let text = String::from_utf8_lossy(line);
        let ns = match text.strip_prefix("CHALLENGE ") {
            Some(ns) if is_nonce(ns) => ns.to_string(),
            Some(_) => return Err("malformed challenge".to_string()),
            None if text.starts_with("ERR ") => {
                return Err(format!("refused: {}", truncate_for_display(line)))
            }
            None => {
                return Err(format!(
                    "the server did not ask for a proof (it answered '{}'): it has no cluster secret, \
                     or is not a dsm master; refusing to trust it",
                    truncate_for_display(line)
                ))
            }
        };
        let mp = self.secret.mac_hex("peer", self.role, &self.id, &ns, &self.nonce);
        self.server_nonce = Some(ns);
        Ok(format!("PROOF {} {mp}", self.nonce))
    }

    /// Checks the server's `PROOF <ms>` line.
    pub fn verify(&self, line: &[u8]) -> std::result::Result<(), String> {
        let Some(ns) = &self.server_nonce else {
            return Err("no challenge answered yet".to_string());
        };
        let text = String::from_utf8_lossy(line);
        match text.strip_prefix("PROOF ") {
            Some(ms) if self.secret.verify("server", self.role, &self.id, ns, &self.nonce, ms) => Ok(()),
            Some(_) => Err("the server's proof is wrong: it does not know the cluster secret".to_string()),
            None if text.starts_with("ERR ") => Err(format!("refused: {}", truncate_for_display(line))),
            None => Err(format!("expected PROOF <mac>, got '{}'", truncate_for_display(line))),
        }
    }
}

/// Runs the server's side on a connection whose first line was read: sends the challenge, reads
/// and checks the proof (within [`AUTH_TIMEOUT`]), and answers with the server's proof. On
/// failure the peer is sent `ERR auth failed: <why>` and the reason is returned for the log;
/// the caller closes the connection. The read timeout is cleared again on success.
pub fn serve_handshake(
    secret: &Secret,
    role: PeerRole,
    id: &str,
    stream: &TcpStream,
    reader: &mut LineReader<TcpStream>,
) -> std::result::Result<(), String> {
    let handshake = ServerHandshake::new(secret, role, id, fresh_nonce());
    let result = (|| {
        stream.set_read_timeout(Some(AUTH_TIMEOUT)).map_err(|e| e.to_string())?;
        write_line(stream, &handshake.challenge()).map_err(|e| e.to_string())?;
        let line = read_line(reader)?;
        handshake.check(&line)
    })();
    match result {
        Ok(proof) => {
            write_line(stream, &proof).map_err(|e| e.to_string())?;
            stream.set_read_timeout(None).map_err(|e| e.to_string())?;
            Ok(())
        }
        Err(why) => {
            let _ = write_line(stream, &format!("ERR auth failed: {why}"));
            Err(why)
        }
    }
}

/// Runs the peer's side on a connection whose first line was sent: answers the challenge and
/// checks the server's proof. The caller's read timeout applies (at most [`AUTH_TIMEOUT`] is
/// set if there is none).
pub fn peer_handshake(
    secret: &Secret,
    role: PeerRole,
    id: &str,
    stream: &TcpStream,
    reader: &mut LineReader<TcpStream>,
) -> Result<()> {
    if stream.read_timeout()?.is_none() {
        stream.set_read_timeout(Some(AUTH_TIMEOUT))?;
    }
    let mut handshake = PeerHandshake::new(secret, role, id, fresh_nonce());
    let challenge = read_line(reader).map_err(Error::Unavailable)?;
    let proof = handshake.answer(&challenge).map_err(Error::Unavailable)?;
    write_line(stream, &proof)?;
    let answer = read_line(reader).map_err(Error::Unavailable)?;
    handshake.verify(&answer).map_err(Error::Unavailable)
}

fn write_line(stream: &TcpStream, line: &str) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(line.len() + 1);
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
    (&*stream).write_all(&out)
}

fn read_line(reader: &mut LineReader<TcpStream>) -> std::result::Result<Vec<u8>, String> {
    match reader.read_line() {
        Ok(Some(line)) => Ok(line.to_vec()),
        Ok(None) => Err("the connection closed during the handshake".to_string()),
        Err(LineError::TooLong) => Err("handshake line too long".to_string()),
        Err(LineError::Io(e)) if crate::client::is_timeout(&e) => {
            Err(format!("no handshake answer within {} ms", AUTH_TIMEOUT.as_millis()))
        }
        Err(LineError::Io(e)) => Err(e.to_string()),
    }
}

/// The client password of `--requirepass`. Its `Debug` form does not show it.
#[derive(Clone)]
pub struct Password {
    /// The password itself: a master sends it to the other master when it probes it.
    plain: Vec<u8>,
    /// Its SHA-256 digest, what attempts are compared with.
    digest: [u8; 32],
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

impl Password {
    /// A password: 1 to [`MAX_SECRET_LEN`] bytes without line breaks.
    pub fn new(password: &[u8]) -> Result<Password> {
        if password.is_empty() || password.len() > MAX_SECRET_LEN {
            return Err(Error::Config(format!("the password must be 1 to {MAX_SECRET_LEN} bytes")));
        }
        if password.iter().any(|&b| b == b'\n' || b == b'\r') {
            return Err(Error::Config("the password must not contain line breaks".to_string()));
        }
        Ok(Password { plain: password.to_vec(), digest: Sha256::digest(password).into() })
    }

    /// Reads a password from a file; surrounding whitespace (a trailing newline) is dropped.
    pub fn from_file(path: &Path) -> Result<Password> {
        let raw = std::fs::read(path)
            .map_err(|e| Error::Config(format!("cannot read the password file {}: {e}", path.display())))?;
        warn_if_readable_by_others(path);
        Password::new(raw.trim_ascii())
    }

    /// True when `attempt` is the password; constant time in the content and length of both.
    pub fn check(&self, attempt: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(attempt).into();
        self.digest.ct_eq(&digest).into()
    }

    /// The password's bytes, to send in `AUTH` (a master probing the other master).
    pub fn as_bytes(&self) -> &[u8] {
        &self.plain
    }
}

/// Lower-case hex.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Decodes lower-case hex, as sent; `None` if malformed.
fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| text.get(i..i + 2).and_then(|pair| u8::from_str_radix(pair, 16).ok()))
        .collect()
}

fn is_nonce(text: &str) -> bool {
    text.len() == NONCE_LEN * 2 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::new(s.as_bytes()).unwrap()
    }

    /// Runs a whole handshake without sockets; the error of whichever side refused.
    fn exchange(
        server: &Secret,
        peer: &Secret,
        role: PeerRole,
        sid: &str,
        pid: &str,
    ) -> std::result::Result<(), String> {
        let s = ServerHandshake::new(server, role, sid, fresh_nonce());
        let mut p = PeerHandshake::new(peer, role, pid, fresh_nonce());
        let proof = p.answer(s.challenge().as_bytes())?;
        let answer = s.check(proof.as_bytes())?;
        p.verify(answer.as_bytes())
    }

    #[test]
    fn the_same_secret_passes_both_ways() {
        let k = secret("0123456789abcdef-cluster");
        for role in [PeerRole::Slave, PeerRole::Stream, PeerRole::Handoff] {
            exchange(&k, &k, role, "s1", "s1").unwrap();
        }
    }

    #[test]
    fn a_wrong_secret_is_refused_by_the_server() {
        let err = exchange(
            &secret("0123456789abcdef-right"),
            &secret("0123456789abcdef-wrong"),
            PeerRole::Slave,
            "s1",
            "s1",
        )
        .unwrap_err();
        assert!(err.contains("does not know the cluster secret"), "{err}");
    }

    #[test]
    fn an_impostor_server_is_refused_by_the_peer() {
        let real = secret("0123456789abcdef-right");
        let fake = secret("0123456789abcdef-wrong");
        let s = ServerHandshake::new(&fake, PeerRole::Stream, "-", fresh_nonce());
        let mut p = PeerHandshake::new(&real, PeerRole::Stream, "-", fresh_nonce());
        let proof = p.answer(s.challenge().as_bytes()).unwrap();
        // The impostor cannot check the proof; it claims success with a made-up MAC.
        let _ = s.check(proof.as_bytes());
        let forged = format!("PROOF {}", "ab".repeat(MAC_LEN));
        assert!(p.verify(forged.as_bytes()).unwrap_err().contains("does not know"));
        // Nor can it reflect the peer's own MAC back.
        let mp = proof.rsplit(' ').next().unwrap();
        assert!(p.verify(format!("PROOF {mp}").as_bytes()).is_err());
    }

    #[test]
    fn a_recorded_proof_does_not_replay() {
        let k = secret("0123456789abcdef-cluster");
        let first = ServerHandshake::new(&k, PeerRole::Handoff, "-", fresh_nonce());
        let mut p = PeerHandshake::new(&k, PeerRole::Handoff, "-", fresh_nonce());
        let recorded = p.answer(first.challenge().as_bytes()).unwrap();
        assert!(first.check(recorded.as_bytes()).is_ok());
        let second = ServerHandshake::new(&k, PeerRole::Handoff, "-", fresh_nonce());
        assert!(second.check(recorded.as_bytes()).is_err());
    }

    #[test]
    fn the_proof_is_bound_to_the_role_and_the_id() {
        let k = secret("0123456789abcdef-cluster");
        assert!(exchange(&k, &k, PeerRole::Slave, "s2", "s1").is_err());
        let s = ServerHandshake::new(&k, PeerRole::Handoff, "-", fresh_nonce());
        let mut p = PeerHandshake::new(&k, PeerRole::Stream, "-", fresh_nonce());
        let proof = p.answer(s.challenge().as_bytes()).unwrap();
        assert!(s.check(proof.as_bytes()).is_err());
    }

    #[test]
    fn malformed_handshake_lines_are_refused() {
        let k = secret("0123456789abcdef-cluster");
        let s = ServerHandshake::new(&k, PeerRole::Slave, "s1", fresh_nonce());
        let bad: &[&[u8]] = &[b"", b"PROOF", b"PROOF x y", b"PROOF \xff\xfe y", b"proof a b c", b"WELCOME 1"];
        for line in bad {
            assert!(s.check(line).is_err(), "{line:?}");
        }
        let mut p = PeerHandshake::new(&k, PeerRole::Slave, "s1", fresh_nonce());
        assert!(p.verify(b"PROOF 00").is_err(), "a proof before any challenge");
        assert!(p.answer(b"WELCOME 3").unwrap_err().contains("did not ask for a proof"));
        assert!(p.answer(b"ERR auth failed: x").unwrap_err().starts_with("refused"));
        assert!(p.answer(b"CHALLENGE zz").is_err());
    }

    #[test]
    fn secrets_and_passwords_are_checked() {
        assert!(Secret::new(b"short").is_err());
        assert!(!format!("{:?}", secret("0123456789abcdef-cluster")).contains("0123"));
        let pw = Password::new(b"hunter2 with spaces").unwrap();
        assert!(pw.check(b"hunter2 with spaces"));
        assert!(!pw.check(b"hunter2"));
        assert!(!pw.check(b""));
        assert!(Password::new(b"").is_err());
        assert!(Password::new(b"a\nb").is_err());
        assert_eq!(unhex(&hex(&[0, 1, 0xab, 0xff])), Some(vec![0, 1, 0xab, 0xff]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
    }
}
