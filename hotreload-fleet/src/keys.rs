//! Keys and signatures, in minisign's formats: a key made with `minisign -G` (or
//! [`generate_keys`]) signs releases, and the public key files are what nodes trust.
//!
//! What is signed is a release's statement ([`Release::statement`](crate::Release::statement)):
//! the module, the release number, what kind of release it is, the build's object name, size
//! and SHA-256, and its API and state versions. A signature therefore binds the number to the
//! bytes: a record replayed with another number, or pointing at another build, fails.

use std::path::{Path, PathBuf};

use crate::FleetError;

/// The private key a publisher signs with. It is read from its file and never leaves the
/// process.
pub struct SigningKey {
    secret: minisign::SecretKey,
    public: minisign::PublicKey,
    path: PathBuf,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Reads a minisign secret key file. `password` decrypts an encrypted key (`minisign -G`
    /// asks for one); `None` for a key made without (`minisign -G -W`, [`generate_keys`]).
    pub fn from_file(path: impl AsRef<Path>, password: Option<String>) -> Result<Self, FleetError> {
        let path = path.as_ref().to_owned();
        let bad = |reason: String| FleetError::Key {
            path: path.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|err| bad(err.to_string()))?;
        let boxed = minisign::SecretKeyBox::from_string(&text)
            .map_err(|err| bad(format!("not a minisign secret key: {err}")))?;
        let secret = match password {
            Some(password) => boxed.into_secret_key(Some(password)),
            None => boxed.into_unencrypted_secret_key(),
        }
        .map_err(|err| bad(format!("cannot open the secret key: {err}")))?;
        let public = minisign::PublicKey::from_secret_key(&secret)
            .map_err(|err| bad(format!("no public key in the secret key: {err}")))?;
        Ok(SigningKey {
            secret,
            public,
            path,
        })
    }

    /// Signs `statement`, returning minisign's signature file text (prehashed, with the
    /// statement's first line as the trusted comment).
    pub(crate) fn sign(&self, statement: &str) -> Result<String, FleetError> {
        let comment = statement.lines().next().unwrap_or_default();
        let signature = minisign::sign(
            Some(&self.public),
            &self.secret,
            statement.as_bytes(),
            Some(comment),
            Some("hotreload release signature"),
        )
        .map_err(|err| FleetError::Key {
            path: self.path.clone(),
            reason: format!("signing failed: {err}"),
        })?;
        Ok(signature.into_string())
    }

    /// The public key's minisign key id, hex, as `minisign` prints it.
    pub fn key_id(&self) -> String {
        key_id_hex(self.public.keynum())
    }
}

/// The public keys whose signatures a node accepts.
#[derive(Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<(String, minisign_verify::PublicKey)>,
}

impl std::fmt::Debug for TrustedKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

impl TrustedKeys {
    /// No key: every signature is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trusts the minisign public key in file `path` (as `minisign -G` writes it).
    pub fn with_file(mut self, path: impl AsRef<Path>) -> Result<Self, FleetError> {
        let path = path.as_ref();
        let bad = |reason: String| FleetError::Key {
            path: path.to_owned(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|err| bad(err.to_string()))?;
        let key = minisign_verify::PublicKey::decode(&text)
            .map_err(|err| bad(format!("not a minisign public key: {err}")))?;
        let id = public_key_id(&text).map_err(bad)?;
        self.keys.push((id, key));
        Ok(self)
    }

    /// Trusts the public key of `key` (a publisher checking its own records).
    pub fn of_signing_key(key: &SigningKey) -> Result<Self, FleetError> {
        let text = key
            .public
            .to_box()
            .map_err(|err| FleetError::Key {
                path: key.path.clone(),
                reason: err.to_string(),
            })?
            .into_string();
        let decoded = minisign_verify::PublicKey::decode(&text).map_err(|err| FleetError::Key {
            path: key.path.clone(),
            reason: err.to_string(),
        })?;
        Ok(TrustedKeys {
            keys: vec![(key.key_id(), decoded)],
        })
    }

    /// Checks `signature` (minisign's signature file text) over `statement` against the
    /// trusted keys. The error says why in one line: no trusted key made it, or it does not
    /// match.
    pub fn verify(&self, statement: &str, signature: &str) -> Result<(), String> {
        let signature = minisign_verify::Signature::decode(signature)
            .map_err(|err| format!("the signature does not decode: {err}"))?;
        let mut last = "no trusted key".to_owned();
        for (id, key) in &self.keys {
            match key.verify(statement.as_bytes(), &signature, false) {
                Ok(()) => return Ok(()),
                Err(minisign_verify::Error::UnexpectedKeyId) => {
                    last = "signed by a key that is not trusted".to_owned()
                }
                Err(err) => return Err(format!("the signature does not match key {id}: {err}")),
            }
        }
        Err(last)
    }

    /// How many keys are trusted.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Writes a new key pair without a password: the secret key to `secret`, the public key to
/// `public` (minisign's formats). Neither file may exist. For a key protected by a password,
/// use `minisign -G`.
pub fn generate_keys(secret: &Path, public: &Path) -> Result<String, FleetError> {
    let bad = |path: &Path, reason: String| FleetError::Key {
        path: path.to_owned(),
        reason,
    };
    let pair = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|err| bad(secret, err.to_string()))?;
    let secret_text = pair
        .sk
        .to_box(None)
        .map_err(|err| bad(secret, err.to_string()))?
        .into_string();
    let public_text = pair
        .pk
        .to_box()
        .map_err(|err| bad(public, err.to_string()))?
        .into_string();
    for (path, text) in [(secret, &secret_text), (public, &public_text)] {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|err| bad(path, err.to_string()))?;
        std::io::Write::write_all(&mut file, text.as_bytes())
            .map_err(|err| bad(path, err.to_string()))?;
    }
    Ok(key_id_hex(pair.pk.keynum()))
}

/// The key id of a public key file's text: the 8 bytes after the algorithm in its base64 line.
fn public_key_id(text: &str) -> Result<String, String> {
    let line = text
        .lines()
        .find(|line| !line.starts_with("untrusted comment:") && !line.trim().is_empty())
        .ok_or("no key line")?;
    let key = minisign::PublicKey::from_base64(line.trim())
        .map_err(|err| format!("not a minisign public key: {err}"))?;
    Ok(key_id_hex(key.keynum()))
}

/// Minisign prints key ids as the little-endian number in upper-case hex.
fn key_id_hex(keynum: &[u8]) -> String {
    keynum.iter().rev().map(|b| format!("{b:02X}")).collect()
}
