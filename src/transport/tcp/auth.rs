//! The shared secret, the nonces and the handshake's proofs.
//!
//! A [`Secret`] comes from a file named in the deployment file, refused (as ssh refuses a key)
//! when group or others may read or write it. Each side proves it knows the secret with an
//! HMAC-SHA256 over a label naming its role, the client's Hello and the server's nonce
//! ([`proof`]); a proof is checked in constant time ([`verify`]).

use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use hmac::digest::KeyInit;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The fewest bytes a secret has (after its one trailing newline is trimmed).
pub(crate) const SECRET_MIN_BYTES: usize = 16;

/// The most bytes a secret file holds: a secret is one short line, and reading a file named
/// by mistake (a log, a device) must not fill memory.
pub(crate) const SECRET_FILE_MAX_BYTES: usize = 4096;

/// What the server's proof starts with.
const SERVER_LABEL: &[u8] = b"iotstream server v1";
/// What the client's proof starts with.
const CLIENT_LABEL: &[u8] = b"iotstream client v1";

/// A shared secret: the HMAC key both ends of a link hold. Its Debug shows where it came
/// from, never its bytes.
#[derive(Clone)]
pub(crate) struct Secret {
    bytes: Vec<u8>,
    /// The file it was read from, or a description.
    from: String,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("from", &self.from)
            .finish_non_exhaustive()
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        for b in self.bytes.iter_mut() {
            // SAFETY: `b` is a valid, aligned, exclusive reference. Volatile, so that the
            // write is not removed as dead.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

/// Why a secret could not be had. Each Display is one sentence naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SecretError {
    /// No file at that path.
    #[error("the secret file {} does not exist", .path.display())]
    Missing {
        /// The path named.
        path: PathBuf,
    },
    /// The file could not be opened or read.
    #[error("cannot read the secret file {}: {error}", .path.display())]
    Unreadable {
        /// The path named.
        path: PathBuf,
        /// The system's error.
        error: String,
    },
    /// Not a regular file (a directory, a device, a pipe).
    #[error("the secret file {} is not a regular file", .path.display())]
    NotAFile {
        /// The path named.
        path: PathBuf,
    },
    /// Group or others may read or write it.
    #[error(
        "permissions {mode:04o} for the secret file {path} are too open: group and others must \
         not read or write it, so it is refused (run: chmod 600 {path})",
        path = .path.display()
    )]
    TooOpen {
        /// The path named.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Longer than [`SECRET_FILE_MAX_BYTES`].
    #[error(
        "the secret file {} holds more than {SECRET_FILE_MAX_BYTES} bytes: a secret is one short line",
        .path.display()
    )]
    TooLarge {
        /// The path named.
        path: PathBuf,
    },
    /// Empty, or only a newline.
    #[error("the secret file {} is empty", .path.display())]
    Empty {
        /// The path named.
        path: PathBuf,
    },
    /// Shorter than [`SECRET_MIN_BYTES`].
    #[error(
        "the secret in {} is {bytes} bytes long, it needs at least {SECRET_MIN_BYTES} \
         (make one with: head -c 32 /dev/urandom | base64 > FILE)",
        .path.display()
    )]
    TooShort {
        /// The path named.
        path: PathBuf,
        /// Its length.
        bytes: usize,
    },
}

/// Why a local file of a link (a secret, a TLS file) could not be read; the caller says which
/// file it is.
pub(crate) enum FileProblem {
    /// No file at that path.
    Missing,
    /// Opening or reading failed: the system's error.
    Unreadable(String),
    /// Not a regular file (a directory, a device, a pipe).
    NotAFile,
    /// Group or others may read or write a file that must be private: its permission bits.
    TooOpen(u32),
    /// Longer than the caller's limit.
    TooLarge,
}

/// Reads the file at `path` whole: a regular file of at most `max` bytes and, if `private`,
/// one that group and others may neither read nor write (as ssh requires of keys). Opened
/// without blocking (a named pipe named by mistake must not wait for a writer); the checks look
/// at the file opened, not at the path again.
pub(crate) fn read_local_file(
    path: &Path,
    max: usize,
    private: bool,
) -> Result<Vec<u8>, FileProblem> {
    let unreadable = |e: io::Error| FileProblem::Unreadable(e.to_string());
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => FileProblem::Missing,
            _ => unreadable(e),
        })?;
    let meta = file.metadata().map_err(unreadable)?;
    if !meta.is_file() {
        return Err(FileProblem::NotAFile);
    }
    let mode = meta.permissions().mode() & 0o7777;
    if private && mode & 0o077 != 0 {
        return Err(FileProblem::TooOpen(mode));
    }
    let mut bytes = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(unreadable)?;
    if bytes.len() > max {
        return Err(FileProblem::TooLarge);
    }
    Ok(bytes)
}

impl Secret {
    /// Reads a secret from `path`: a regular file of at most 4 KiB that only its owner may read
    /// or write, of at least 16 bytes once one trailing newline (`\n` or `\r\n`) is trimmed.
    pub(crate) fn from_file(path: &Path) -> Result<Secret, SecretError> {
        let mut bytes = read_local_file(path, SECRET_FILE_MAX_BYTES, true).map_err(|p| {
            let path = path.to_owned();
            match p {
                FileProblem::Missing => SecretError::Missing { path },
                FileProblem::Unreadable(error) => SecretError::Unreadable { path, error },
                FileProblem::NotAFile => SecretError::NotAFile { path },
                FileProblem::TooOpen(mode) => SecretError::TooOpen { path, mode },
                FileProblem::TooLarge => SecretError::TooLarge { path },
            }
        })?;
        if bytes.ends_with(b"\n") {
            bytes.pop();
            if bytes.ends_with(b"\r") {
                bytes.pop();
            }
        }
        if bytes.is_empty() {
            return Err(SecretError::Empty {
                path: path.to_owned(),
            });
        }
        let secret = Secret {
            bytes,
            from: path.display().to_string(),
        };
        if secret.bytes.len() < SECRET_MIN_BYTES {
            return Err(SecretError::TooShort {
                path: path.to_owned(),
                bytes: secret.bytes.len(),
            });
        }
        Ok(secret)
    }

    /// A secret from bytes held in memory (tests, fuzzing); `from` describes them.
    ///
    /// # Panics
    /// When `bytes` is shorter than [`SECRET_MIN_BYTES`].
    pub(crate) fn from_bytes(bytes: Vec<u8>, from: &str) -> Secret {
        assert!(
            bytes.len() >= SECRET_MIN_BYTES,
            "a secret of {} bytes",
            bytes.len()
        );
        Secret {
            bytes,
            from: from.to_owned(),
        }
    }
}

/// Which side of the handshake a proof is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// The side that connects: the writer's.
    Client,
    /// The side that listens: the reader's.
    Server,
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Server => "server",
        })
    }
}

fn mac(secret: &Secret, role: Role, hello: &[u8], server_nonce: &[u8; 32]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret.bytes)
        .expect("HMAC takes a key of any length");
    mac.update(match role {
        Role::Client => CLIENT_LABEL,
        Role::Server => SERVER_LABEL,
    });
    // The label and the nonce have fixed lengths: the concatenation is unambiguous.
    mac.update(hello);
    mac.update(server_nonce);
    mac
}

/// `role`'s proof: HMAC-SHA256(secret, label of role || Hello body || server nonce).
pub(crate) fn proof(
    secret: &Secret,
    role: Role,
    hello: &[u8],
    server_nonce: &[u8; 32],
) -> [u8; 32] {
    let tag = mac(secret, role, hello, server_nonce)
        .finalize()
        .into_bytes();
    let mut out = [0; 32];
    out.copy_from_slice(&tag);
    out
}

/// Whether `claimed` is `role`'s proof under `secret`, compared in constant time.
pub(crate) fn verify(
    secret: &Secret,
    role: Role,
    hello: &[u8],
    server_nonce: &[u8; 32],
    claimed: &[u8; 32],
) -> bool {
    mac(secret, role, hello, server_nonce)
        .verify_slice(claimed)
        .is_ok()
}

/// HMAC-SHA256(secret, `label` || each of `parts`), for protocols other than a link's
/// handshake (the launchers' observation channel): `label` names the protocol and the message,
/// so a tag made for one can never pass for another, nor for a link's proof. Callers keep
/// the concatenation unambiguous (fixed-length parts, or a length-carrying last part).
pub(crate) fn tag(secret: &Secret, label: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut out = [0; 32];
    out.copy_from_slice(&tag_mac(secret, label, parts).finalize().into_bytes());
    out
}

/// Whether `claimed` is [`tag`]`(secret, label, parts)`, compared in constant time.
pub(crate) fn verify_tag(secret: &Secret, label: &[u8], parts: &[&[u8]], claimed: &[u8]) -> bool {
    tag_mac(secret, label, parts).verify_slice(claimed).is_ok()
}

fn tag_mac(secret: &Secret, label: &[u8], parts: &[&[u8]]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&secret.bytes)
        .expect("HMAC takes a key of any length");
    mac.update(label);
    for part in parts {
        mac.update(part);
    }
    mac
}

/// What names the live view's bearer token in its HMAC: see [`view_token`].
const VIEW_TOKEN_LABEL: &[u8] = b"iotstream live view token v1";

/// The live view's bearer token for a deployment with this secret: the hex of
/// HMAC-SHA256(secret, "iotstream live view token v1"). Clients send it over plain HTTP, where
/// anyone on the path may read it; it grants reading the view, nothing else: the secret
/// itself, which proves a link's peer, is never sent (`docs/security.md`), and the token
/// cannot be turned back into it. `iotstream view-token` prints it.
pub(crate) fn view_token(secret: &Secret) -> String {
    tag(secret, VIEW_TOKEN_LABEL, &[])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// 32 bytes from the operating system's random source.
pub(crate) fn nonce() -> io::Result<[u8; 32]> {
    let mut out = [0; 32];
    getrandom::fill(&mut out)
        .map_err(|e| io::Error::other(format!("no random bytes for a nonce: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// Writes `contents` to `name` in `dir` with permission bits `mode`.
    fn secret_file(dir: &Path, name: &str, contents: &[u8], mode: u32) -> PathBuf {
        let path = dir.join(name);
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_file_gives_its_secret_less_one_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = secret_file(dir.path(), "s", b"0123456789abcdef\n", 0o600);
        let secret = Secret::from_file(&path).unwrap();
        assert_eq!(secret.bytes, b"0123456789abcdef");
        let path = secret_file(dir.path(), "crlf", b"0123456789abcdef\r\n", 0o400);
        assert_eq!(Secret::from_file(&path).unwrap().bytes, b"0123456789abcdef");
        let path = secret_file(dir.path(), "two", b"0123456789abcdef\n\n", 0o600);
        assert_eq!(
            Secret::from_file(&path).unwrap().bytes,
            b"0123456789abcdef\n",
            "one newline only"
        );
    }

    #[test]
    fn a_file_others_may_read_or_write_is_refused_as_ssh_does() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604, 0o620, 0o602, 0o666] {
            let path = secret_file(dir.path(), "open", b"0123456789abcdef", mode);
            let p = path.display();
            assert_eq!(
                Secret::from_file(&path).unwrap_err().to_string(),
                format!(
                    "permissions {mode:04o} for the secret file {p} are too open: group and \
                     others must not read or write it, so it is refused (run: chmod 600 {p})"
                )
            );
        }
    }

    #[test]
    fn missing_empty_short_large_and_odd_files_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let err = |p: &Path| Secret::from_file(p).unwrap_err().to_string();
        assert_eq!(
            err(&dir.path().join("nothing")),
            format!("the secret file {d}/nothing does not exist")
        );
        let path = secret_file(dir.path(), "empty", b"", 0o600);
        assert_eq!(err(&path), format!("the secret file {d}/empty is empty"));
        let path = secret_file(dir.path(), "newline", b"\n", 0o600);
        assert_eq!(err(&path), format!("the secret file {d}/newline is empty"));
        let path = secret_file(dir.path(), "short", b"0123456789abcde\n", 0o600);
        assert_eq!(
            err(&path),
            format!(
                "the secret in {d}/short is 15 bytes long, it needs at least 16 (make one with: \
                 head -c 32 /dev/urandom | base64 > FILE)"
            )
        );
        let path = secret_file(dir.path(), "large", &[b'x'; 4097], 0o600);
        assert_eq!(
            err(&path),
            format!(
                "the secret file {d}/large holds more than 4096 bytes: a secret is one short line"
            )
        );
        let sub = dir.path().join("dir");
        fs::create_dir(&sub).unwrap();
        fs::set_permissions(&sub, fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(
            err(&sub),
            format!("the secret file {d}/dir is not a regular file")
        );
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let secret = Secret::from_bytes(b"very-secret-bytes-1234".to_vec(), "test");
        let shown = format!("{secret:?}");
        assert_eq!(shown, "Secret { from: \"test\", .. }");
        assert!(!shown.contains("very-secret"));
    }

    #[test]
    fn proofs_depend_on_secret_role_hello_and_nonce() {
        let a = Secret::from_bytes(b"0123456789abcdef".to_vec(), "a");
        let b = Secret::from_bytes(b"0123456789abcdeF".to_vec(), "b");
        let p = proof(&a, Role::Server, b"hello", &[1; 32]);
        assert!(verify(&a, Role::Server, b"hello", &[1; 32], &p));
        assert!(!verify(&b, Role::Server, b"hello", &[1; 32], &p));
        assert!(!verify(&a, Role::Client, b"hello", &[1; 32], &p));
        assert!(!verify(&a, Role::Server, b"hellO", &[1; 32], &p));
        assert!(!verify(&a, Role::Server, b"hello", &[2; 32], &p));
        // HMAC-SHA256 itself, against a value computed independently (RFC 4231 test case 2).
        let jefe = Secret {
            bytes: b"Jefe".to_vec(),
            from: "rfc".into(),
        };
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&jefe.bytes).unwrap();
        m.update(b"what do ya want for nothing?");
        let tag = m.finalize().into_bytes();
        assert_eq!(
            tag.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(nonce().unwrap(), nonce().unwrap());
    }
}
