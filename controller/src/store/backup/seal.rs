//! The encryption of a backup file (see the parent module for the layout): scrypt derives
//! the key and a passphrase check value from the passphrase and a random salt; the bundle is
//! sealed with AES-256-GCM (ring) in 1 MiB chunks whose nonces are the chunk counter and a
//! final-chunk flag (age's STREAM construction), each authenticating the header line.

use serde::{Deserialize, Serialize};

use super::BackupError;

/// First line of a backup file: what it is and the version of its encryption layout.
pub(super) const MAGIC: &[u8] = b"certfleet-backup 1\n";
const MAGIC_PREFIX: &[u8] = b"certfleet-backup ";
/// Bundle bytes per encrypted chunk.
pub(super) const CHUNK: usize = 1 << 20;
/// AES-256-GCM tag length.
pub(super) const TAG: usize = 16;
/// scrypt cost of new backups: OWASP's recommendation (N = 2^17, r = 8, p = 1: 128 MiB and
/// about a second per try, for the person with the passphrase and for a guesser alike).
const LOG_N: u8 = 17;
const SCRYPT_R: u32 = 8;
const SCRYPT_P: u32 = 1;
/// Highest cost a restore accepts: a forged header must not make it allocate gigabytes.
const MAX_LOG_N: u8 = 20;
/// Shortest passphrase accepted for a new backup (it guards the fleet CA key).
pub const MIN_PASSPHRASE_CHARS: usize = 12;

/// The plaintext header line after the magic.
#[derive(Serialize, Deserialize)]
struct CipherHeader {
    kdf: String,
    log_n: u8,
    r: u32,
    p: u32,
    /// Hex.
    salt: String,
    /// Hex: the last 32 bytes scrypt derives (tells a wrong passphrase from damage).
    check: String,
    cipher: String,
    chunk_bytes: usize,
}

fn derive(
    passphrase: &[u8],
    salt: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
) -> Result<(ring::aead::LessSafeKey, [u8; 32]), BackupError> {
    let params = scrypt::Params::new(log_n, r, p)
        .map_err(|e| BackupError::Damaged(format!("scrypt parameters: {e}")))?;
    let mut out = [0u8; 64];
    scrypt::scrypt(passphrase, salt, &params, &mut out)
        .map_err(|e| BackupError::Damaged(format!("scrypt: {e}")))?;
    let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &out[..32])
        .map_err(|_| BackupError::Damaged("AES-256-GCM key".into()))?;
    let mut check = [0u8; 32];
    check.copy_from_slice(&out[32..]);
    Ok((ring::aead::LessSafeKey::new(key), check))
}

/// Nonce of chunk `counter`: the counter and whether it is the last chunk (age's STREAM).
fn nonce(counter: u64, last: bool) -> ring::aead::Nonce {
    let mut n = [0u8; 12];
    n[3..11].copy_from_slice(&counter.to_be_bytes());
    n[11] = u8::from(last);
    ring::aead::Nonce::assume_unique_for_key(n)
}

/// Checks a passphrase for a new backup.
pub fn check_new_passphrase(passphrase: &str) -> Result<(), BackupError> {
    let n = passphrase.chars().count();
    if n < MIN_PASSPHRASE_CHARS {
        return Err(BackupError::Passphrase(format!(
            "{n} characters; a backup holds the fleet CA key: use at least {MIN_PASSPHRASE_CHARS}"
        )));
    }
    Ok(())
}

/// Encrypts `plain` (a bundle) with `passphrase`.
pub fn seal(plain: &[u8], passphrase: &str) -> Result<Vec<u8>, BackupError> {
    seal_with(plain, passphrase, LOG_N)
}

pub(super) fn seal_with(plain: &[u8], passphrase: &str, log_n: u8) -> Result<Vec<u8>, BackupError> {
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut salt)
        .map_err(|_| BackupError::Passphrase("no randomness for the salt".into()))?;
    let (key, check) = derive(passphrase.as_bytes(), &salt, log_n, SCRYPT_R, SCRYPT_P)?;
    let header = CipherHeader {
        kdf: "scrypt".into(),
        log_n,
        r: SCRYPT_R,
        p: SCRYPT_P,
        salt: hex::encode(salt),
        check: hex::encode(check),
        cipher: "AES-256-GCM".into(),
        chunk_bytes: CHUNK,
    };
    let mut out = MAGIC.to_vec();
    serde_json::to_writer(&mut out, &header).expect("header serializes");
    out.push(b'\n');
    let aad = out.clone();
    let chunks: Vec<&[u8]> = if plain.is_empty() {
        vec![&[]]
    } else {
        plain.chunks(CHUNK).collect()
    };
    let last = chunks.len() - 1;
    for (i, c) in chunks.into_iter().enumerate() {
        let mut buf = c.to_vec();
        key.seal_in_place_append_tag(
            nonce(i as u64, i == last),
            ring::aead::Aad::from(aad.as_slice()),
            &mut buf,
        )
        .map_err(|_| BackupError::Damaged("encryption failed".into()))?;
        out.extend_from_slice(&(buf.len() as u32).to_be_bytes());
        out.extend_from_slice(&buf);
    }
    Ok(out)
}

/// Decrypts a backup file's bytes with `passphrase`: the bundle, or why not (not a backup, a
/// newer layout, the wrong passphrase, a truncated or altered file).
pub fn open(file: &[u8], passphrase: &str) -> Result<Vec<u8>, BackupError> {
    if !file.starts_with(MAGIC) {
        if file.starts_with(MAGIC_PREFIX) {
            let line = file[MAGIC_PREFIX.len()..]
                .split(|b| *b == b'\n')
                .next()
                .unwrap_or_default();
            return Err(BackupError::NewerFormat(format!(
                "encryption layout {}; this certfleet reads layout 1",
                String::from_utf8_lossy(&line[..line.len().min(16)])
            )));
        }
        return Err(BackupError::NotABackup(
            "it does not start with a `certfleet-backup` line".into(),
        ));
    }
    let damaged = |s: String| BackupError::Damaged(s);
    let after = &file[MAGIC.len()..];
    let nl = after
        .iter()
        .take(4096)
        .position(|b| *b == b'\n')
        .ok_or_else(|| damaged("no encryption header line".into()))?;
    let header: CipherHeader = serde_json::from_slice(&after[..nl])
        .map_err(|e| damaged(format!("encryption header: {e}")))?;
    if header.kdf != "scrypt" || header.cipher != "AES-256-GCM" {
        return Err(BackupError::NewerFormat(format!(
            "key derivation {} and cipher {}",
            header.kdf, header.cipher
        )));
    }
    if header.log_n > MAX_LOG_N || header.r > 32 || header.p > 16 || header.chunk_bytes > 16 << 20 {
        return Err(damaged(format!(
            "encryption header asks for scrypt 2^{} r={} p={} and {}-byte chunks, beyond what \
             certfleet writes",
            header.log_n, header.r, header.p, header.chunk_bytes
        )));
    }
    let salt = hex::decode(&header.salt).map_err(|e| damaged(format!("salt: {e}")))?;
    let (key, check) = derive(
        passphrase.as_bytes(),
        &salt,
        header.log_n,
        header.r,
        header.p,
    )?;
    if hex::encode(check) != header.check {
        return Err(BackupError::WrongPassphrase);
    }
    let aad = &file[..MAGIC.len() + nl + 1];
    let mut rest = &after[nl + 1..];
    let mut plain = Vec::with_capacity(rest.len());
    let mut counter = 0u64;
    loop {
        if rest.len() < 4 {
            return Err(damaged(format!(
                "truncated: it ends after {counter} chunk(s), without its final chunk"
            )));
        }
        let len = u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < TAG || len > header.chunk_bytes + TAG {
            return Err(damaged(format!(
                "chunk {counter} has an impossible length {len}"
            )));
        }
        if rest.len() - 4 < len {
            return Err(damaged(format!(
                "truncated: chunk {counter} is cut short ({} of {len} bytes)",
                rest.len() - 4
            )));
        }
        let mut buf = rest[4..4 + len].to_vec();
        rest = &rest[4 + len..];
        let last = rest.is_empty();
        let opened = key
            .open_in_place(nonce(counter, last), ring::aead::Aad::from(aad), &mut buf)
            .map_err(|_| {
                damaged(format!(
                    "chunk {counter} fails authentication: the file was truncated or altered"
                ))
            })?;
        plain.extend_from_slice(opened);
        if last {
            return Ok(plain);
        }
        counter += 1;
    }
}
