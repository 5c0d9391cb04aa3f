//! rohmu's asymmetric encryption format, byte for byte, as a `Read` adapter for uploads and a
//! `Write` adapter with `finish()` for downloads.
//!
//! An object is `"pghoa1"`, a big-endian u16 length L, L bytes of RSA-OAEP (SHA-1 for both the
//! hash and MGF1, no label) wrapping 64 random bytes (AES-128 key, 16-byte initial counter
//! block, HMAC-SHA256 key), then the AES-128-CTR ciphertext, then a 32-byte HMAC-SHA256 of the
//! ciphertext (encrypt-then-MAC). An empty plaintext gives an empty object with no header.
//!
//! Decryption streams: plaintext flows on before the MAC at the end is checked, so `finish()`
//! is where integrity is decided, and callers must not publish their output before it
//! succeeds. If the next stage fails part way, decryption keeps authenticating the rest of the
//! input so that tampering is still reported as tampering rather than as whatever garbage made
//! the next stage fail.

use std::io::{self, Read, Write};

use aes::cipher::{KeyIvInit, StreamCipher};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use sha1::Sha1;

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

pub const MAGIC: &[u8; 6] = b"pghoa1";
const KEY_MATERIAL_LEN: usize = 64;
const TAG_LEN: usize = 32;
/// Magic plus the wrapped-key length field.
const PREAMBLE_LEN: usize = MAGIC.len() + 2;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("invalid {kind} key: {reason}")]
    InvalidKey { kind: &'static str, reason: String },
    #[error("not an encrypted object: it does not start with the \"pghoa1\" magic")]
    BadMagic,
    #[error(
        "encrypted object is truncated: {size} bytes end before its header and integrity tag are complete"
    )]
    Truncated { size: u64 },
    #[error("cannot unwrap the object's data key: it was encrypted for a different key pair")]
    WrongKey,
    #[error("integrity check failed: the encrypted object was modified or cut short")]
    IntegrityCheckFailed,
    #[error("generating key material: {0}")]
    Random(String),
}

impl From<Error> for io::Error {
    fn from(err: Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, err)
    }
}

/// The `encrypt::Error` inside an `io::Error`, if that is what it carries.
pub fn error_in(err: &io::Error) -> Option<&Error> {
    err.get_ref()
        .and_then(|inner| inner.downcast_ref::<Error>())
}

/// Takes the `encrypt::Error` out of an `io::Error`, or gives the `io::Error` back.
pub fn into_error(err: io::Error) -> Result<Error, io::Error> {
    match error_in(&err) {
        Some(typed) => Ok(typed.clone()),
        None => Err(err),
    }
}

/// An RSA public key, from a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) or `RSA PUBLIC KEY` block.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublicKey(rsa::PublicKey);

impl PublicKey {
    pub fn from_pem(pem: &str) -> Result<PublicKey, Error> {
        let pem = pem.trim();
        rsa::PublicKey::from_public_key_pem(pem)
            .or_else(|spki_err| {
                rsa::PublicKey::from_pkcs1_pem(pem).map_err(|_| spki_err.to_string())
            })
            .map(PublicKey)
            .map_err(|reason| Error::InvalidKey {
                kind: "public",
                reason,
            })
    }
}

/// An RSA private key, from a PEM `PRIVATE KEY` (PKCS#8) or `RSA PRIVATE KEY` (PKCS#1) block.
#[derive(Clone)]
pub struct PrivateKey(rsa::PrivateKey);

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PrivateKey(<redacted>)")
    }
}

impl PrivateKey {
    pub fn from_pem(pem: &str) -> Result<PrivateKey, Error> {
        let pem = pem.trim();
        rsa::PrivateKey::from_pkcs8_pem(pem)
            .or_else(|pkcs8_err| {
                rsa::PrivateKey::from_pkcs1_pem(pem).map_err(|_| pkcs8_err.to_string())
            })
            .map(PrivateKey)
            .map_err(|reason| Error::InvalidKey {
                kind: "private",
                reason,
            })
    }

    /// Whether this is the private half of `public`.
    pub fn matches(&self, public: &PublicKey) -> bool {
        self.0.to_public_key() == public.0
    }
}

/// The per-object secrets: what the RSA-wrapped block carries.
struct KeyMaterial {
    cipher: Aes128Ctr,
    mac: hmac::Context,
}

impl KeyMaterial {
    fn from_bytes(bytes: &[u8]) -> Result<KeyMaterial, Error> {
        if bytes.len() != KEY_MATERIAL_LEN {
            return Err(Error::IntegrityCheckFailed);
        }
        let (aes_key, rest) = bytes.split_at(16);
        let (nonce, mac_key) = rest.split_at(16);
        let cipher =
            Aes128Ctr::new_from_slices(aes_key, nonce).map_err(|_| Error::IntegrityCheckFailed)?;
        let mac = hmac::Context::with_key(&hmac::Key::new(hmac::HMAC_SHA256, mac_key));
        Ok(KeyMaterial { cipher, mac })
    }
}

/// Encrypts everything read from `inner`: header first, ciphertext, then the MAC at the end.
pub struct EncryptReader<R> {
    inner: R,
    public_key: PublicKey,
    keys: Option<KeyMaterial>,
    /// Bytes produced but not yet handed to the caller (the header, the tag).
    pending: Vec<u8>,
    pending_at: usize,
    done: bool,
}

impl<R: Read> EncryptReader<R> {
    pub fn new(inner: R, public_key: &PublicKey) -> EncryptReader<R> {
        EncryptReader {
            inner,
            public_key: public_key.clone(),
            keys: None,
            pending: Vec::new(),
            pending_at: 0,
            done: false,
        }
    }

    /// Draws fresh key material, wraps it and queues the header.
    fn start(&mut self) -> Result<KeyMaterial, Error> {
        let mut secrets = [0u8; KEY_MATERIAL_LEN];
        SystemRandom::new()
            .fill(&mut secrets)
            .map_err(|_| Error::Random("the system random source failed".into()))?;
        let wrapped = self
            .public_key
            .0
            .oaep_encrypt::<Sha1>(&secrets)
            .map_err(|err| Error::Random(err.to_string()))?;
        let wrapped_len = u16::try_from(wrapped.len()).map_err(|_| Error::InvalidKey {
            kind: "public",
            reason: "key too large for the format".into(),
        })?;
        self.pending.clear();
        self.pending.extend_from_slice(MAGIC);
        self.pending.extend_from_slice(&wrapped_len.to_be_bytes());
        self.pending.extend_from_slice(&wrapped);
        self.pending_at = 0;
        KeyMaterial::from_bytes(&secrets)
    }

    fn drain_pending(&mut self, buf: &mut [u8]) -> usize {
        let available = &self.pending[self.pending_at..];
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.pending_at += n;
        n
    }
}

impl<R: Read> Read for EncryptReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.pending_at < self.pending.len() {
            return Ok(self.drain_pending(buf));
        }
        if self.done {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.done = true;
            // An empty plaintext stays empty: no header, no tag (as rohmu does).
            let Some(keys) = self.keys.take() else {
                return Ok(0);
            };
            self.pending = keys.mac.sign().as_ref().to_vec();
            self.pending_at = 0;
            return Ok(self.drain_pending(buf));
        }
        let keys = match &mut self.keys {
            Some(keys) => keys,
            None => {
                let keys = self.start()?;
                self.keys.insert(keys)
            }
        };
        keys.cipher.apply_keystream(&mut buf[..n]);
        keys.mac.update(&buf[..n]);
        if self.pending_at < self.pending.len() {
            // The header goes first; the ciphertext just made follows it.
            self.pending.extend_from_slice(&buf[..n]);
            return Ok(self.drain_pending(buf));
        }
        Ok(n)
    }
}

enum DecryptState {
    /// Collecting magic, length and wrapped key.
    Header(Vec<u8>),
    // Boxed: the cipher and MAC state dwarf the header buffer.
    Body(Box<KeyMaterial>),
}

/// Decrypts what is written to it into `inner`; `finish()` checks the MAC.
pub struct DecryptWriter<W: Write> {
    inner: W,
    private_key: PrivateKey,
    state: DecryptState,
    /// The last bytes seen: they may be the tag, so they are held back from decryption.
    tail: Vec<u8>,
    scratch: Vec<u8>,
    total: u64,
    /// Set when `inner` failed: from then on input is only authenticated, not decrypted.
    downstream_error: Option<io::Error>,
    /// A bad magic or an unwrappable key: nothing more can be done with this object.
    fatal: Option<Error>,
}

impl<W: Write> DecryptWriter<W> {
    pub fn new(inner: W, private_key: &PrivateKey) -> DecryptWriter<W> {
        DecryptWriter {
            inner,
            private_key: private_key.clone(),
            state: DecryptState::Header(Vec::new()),
            tail: Vec::with_capacity(2 * TAG_LEN),
            scratch: Vec::new(),
            total: 0,
            downstream_error: None,
            fatal: None,
        }
    }

    /// Feeds header bytes; returns how many of `data` the header consumed.
    fn take_header(&mut self, data: &[u8]) -> Result<usize, Error> {
        let DecryptState::Header(header) = &mut self.state else {
            return Ok(0);
        };
        let before = header.len();
        let wanted = if header.len() < PREAMBLE_LEN {
            PREAMBLE_LEN
        } else {
            PREAMBLE_LEN + usize::from(u16::from_be_bytes([header[6], header[7]]))
        };
        let take = (wanted - header.len()).min(data.len());
        header.extend_from_slice(&data[..take]);
        let seen = header.len().min(MAGIC.len());
        if header[..seen] != MAGIC[..seen] {
            return Err(Error::BadMagic);
        }
        if header.len() == PREAMBLE_LEN && wanted == PREAMBLE_LEN {
            // The length is known now; take the wrapped key in the next round.
            let more = self.take_header(&data[take..])?;
            return Ok(take + more);
        }
        if header.len() < wanted || wanted == PREAMBLE_LEN {
            return Ok(take);
        }
        let secrets = self
            .private_key
            .0
            .oaep_decrypt::<Sha1>(&header[PREAMBLE_LEN..])
            .map_err(|_| Error::WrongKey)?;
        debug_assert!(header.len() - before == take);
        self.state = DecryptState::Body(Box::new(KeyMaterial::from_bytes(&secrets)?));
        Ok(take)
    }

    /// Authenticates `ciphertext` and, unless the next stage has failed, decrypts it onwards.
    fn process(&mut self, ciphertext_len: usize) {
        let DecryptState::Body(keys) = &mut self.state else {
            return;
        };
        let ciphertext = &self.tail[..ciphertext_len];
        keys.mac.update(ciphertext);
        if self.downstream_error.is_none() {
            self.scratch.clear();
            self.scratch.extend_from_slice(ciphertext);
            keys.cipher.apply_keystream(&mut self.scratch);
            if let Err(err) = self.inner.write_all(&self.scratch) {
                self.downstream_error = Some(err);
            }
        }
        self.tail.drain(..ciphertext_len);
    }

    /// Checks the tag and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        if let Some(fatal) = self.fatal {
            return Err(fatal.into());
        }
        match &self.state {
            DecryptState::Header(header) if header.is_empty() => {}
            DecryptState::Header(_) => return Err(Error::Truncated { size: self.total }.into()),
            DecryptState::Body(_) => {
                if self.tail.len() < TAG_LEN {
                    return Err(Error::Truncated { size: self.total }.into());
                }
                let body_len = self.tail.len() - TAG_LEN;
                self.process(body_len);
                let DecryptState::Body(keys) = self.state else {
                    unreachable!("state checked above");
                };
                let expected = keys.mac.sign();
                if !tags_equal(expected.as_ref(), &self.tail) {
                    return Err(Error::IntegrityCheckFailed.into());
                }
            }
        }
        if let Some(err) = self.downstream_error {
            return Err(err);
        }
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for DecryptWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if let Some(fatal) = &self.fatal {
            return Err(fatal.clone().into());
        }
        self.total += data.len() as u64;
        let consumed = self
            .take_header(data)
            .inspect_err(|err| self.fatal = Some(err.clone()))?;
        let body = &data[consumed..];
        if body.is_empty() {
            return Ok(data.len());
        }
        self.tail.extend_from_slice(body);
        if self.tail.len() > TAG_LEN {
            let ready = self.tail.len() - TAG_LEN;
            self.process(ready);
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compares two tags in time independent of where they differ.
fn tags_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 3072-bit test key pair (the size MyHoard's tests use), generated once per test process.
    pub(crate) fn test_keys() -> (PublicKey, PrivateKey) {
        use std::sync::OnceLock;
        static KEYS: OnceLock<(PublicKey, PrivateKey)> = OnceLock::new();
        KEYS.get_or_init(|| {
            let private = new_private_key();
            (PublicKey(private.0.to_public_key()), private)
        })
        .clone()
    }

    fn new_private_key() -> PrivateKey {
        use rsa::Generate;
        PrivateKey(rsa::PrivateKey::generate())
    }

    fn encrypt(plain: &[u8], key: &PublicKey, read_size: usize) -> Vec<u8> {
        let mut reader = EncryptReader::new(plain, key);
        let mut out = Vec::new();
        let mut buf = vec![0u8; read_size];
        loop {
            let n = reader.read(&mut buf).expect("encrypt");
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&buf[..n]);
        }
    }

    fn decrypt(cipher: &[u8], key: &PrivateKey, write_size: usize) -> io::Result<Vec<u8>> {
        let mut writer = DecryptWriter::new(Vec::new(), key);
        for chunk in cipher.chunks(write_size.max(1)) {
            writer.write_all(chunk)?;
        }
        writer.finish()
    }

    fn kind(result: io::Result<Vec<u8>>) -> String {
        match result {
            Ok(_) => "ok".into(),
            Err(err) => match error_in(&err) {
                Some(Error::BadMagic) => "bad magic".into(),
                Some(Error::Truncated { .. }) => "truncated".into(),
                Some(Error::WrongKey) => "wrong key".into(),
                Some(Error::IntegrityCheckFailed) => "integrity".into(),
                _ => format!("other: {err}"),
            },
        }
    }

    #[test]
    fn round_trips_at_any_chunking() {
        let (public, private) = test_keys();
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for (read_size, write_size) in [(1, 1), (7, 3), (4096, 100_000), (100_000, 33), (65536, 1)]
        {
            let cipher = encrypt(&plain, &public, read_size);
            assert_eq!(&cipher[..6], MAGIC);
            assert_eq!(cipher.len(), plain.len() + PREAMBLE_LEN + 384 + TAG_LEN);
            let back = decrypt(&cipher, &private, write_size).expect("decrypt");
            assert_eq!(back, plain, "read {read_size} write {write_size}");
        }
    }

    #[test]
    fn empty_plaintext_is_empty_object() {
        let (public, private) = test_keys();
        assert!(encrypt(b"", &public, 10).is_empty());
        assert_eq!(decrypt(b"", &private, 10).expect("empty"), b"");
    }

    #[test]
    fn damage_is_reported_by_kind() {
        let (public, private) = test_keys();
        let plain = vec![42u8; 5000];
        let cipher = encrypt(&plain, &public, 1000);
        let header_len = PREAMBLE_LEN + 384;
        let flip = |at: usize| {
            let mut damaged = cipher.clone();
            damaged[at] ^= 1;
            damaged
        };
        let other_private = new_private_key();
        let cases: Vec<(&str, Vec<u8>, &PrivateKey, &str)> = vec![
            ("intact", cipher.clone(), &private, "ok"),
            ("magic", flip(0), &private, "bad magic"),
            (
                "plain text",
                b"hello world, not encrypted".to_vec(),
                &private,
                "bad magic",
            ),
            (
                "wrapped key",
                flip(PREAMBLE_LEN + 10),
                &private,
                "wrong key",
            ),
            ("body", flip(header_len + 100), &private, "integrity"),
            ("tag", flip(cipher.len() - 1), &private, "integrity"),
            (
                "cut in body",
                cipher[..cipher.len() - 100].to_vec(),
                &private,
                "integrity",
            ),
            (
                "cut in tag",
                cipher[..header_len + 10].to_vec(),
                &private,
                "truncated",
            ),
            (
                "cut in header",
                cipher[..20].to_vec(),
                &private,
                "truncated",
            ),
            ("cut in magic", cipher[..4].to_vec(), &private, "truncated"),
            ("other key", cipher.clone(), &other_private, "wrong key"),
        ];
        for (name, data, key, expected) in cases {
            for write_size in [1, 17, 100_000] {
                assert_eq!(
                    kind(decrypt(&data, key, write_size)),
                    expected,
                    "{name} / {write_size}"
                );
            }
        }
    }

    #[test]
    fn tampering_wins_over_downstream_failure() {
        #[derive(Debug)]
        struct FailAfter(usize);
        impl Write for FailAfter {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                if self.0 < buf.len() {
                    return Err(io::Error::other("downstream broke"));
                }
                self.0 -= buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let (public, private) = test_keys();
        let mut cipher = encrypt(&vec![1u8; 10_000], &public, 4096);
        let last = cipher.len() - 40;
        cipher[last] ^= 0xff;
        let mut writer = DecryptWriter::new(FailAfter(100), &private);
        writer.write_all(&cipher).expect("input is always accepted");
        let err = writer.finish().expect_err("tampered");
        assert!(
            matches!(error_in(&err), Some(Error::IntegrityCheckFailed)),
            "{err}"
        );
    }

    #[test]
    fn keys_parse_and_match() {
        let (public, private) = test_keys();
        assert!(private.matches(&public));
        let err = PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")
            .expect_err("garbage");
        assert!(err.to_string().starts_with("invalid public key"), "{err}");
        assert!(PrivateKey::from_pem("").is_err());
    }
}
