//! Signing keys for access tokens: generation, import, storage and publication.
//!
//! Four JWS algorithms are offered. EdDSA (Ed25519), ES256 (P-256) and RS256
//! (RSA) are asymmetric: authgate keeps the private key and publishes the
//! public one as a JWK, so that other services can verify tokens without being
//! able to mint them. HS256 is a shared secret; it is never published.
//!
//! Keys are generated and parsed with aws-lc-rs, the library jsonwebtoken
//! signs with, and stored as PKCS#8 v1 DER (the form `openssl pkey` writes)
//! or, for HS256, as the raw secret. Whatever is stored is checked to sign
//! through jsonwebtoken, whose aws-lc backend has two quirks handled here:
//! it derives an Ed25519 JWK only from a 48-byte PKCS#8 v1 document, and it
//! wants RSA keys as PKCS#1 `RSAPrivateKey`, not PKCS#8.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use anyhow::{Context, anyhow, bail, ensure};
use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der};
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256,
    RsaKeyPair, RsaPublicKeyComponents,
};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use secrecy::zeroize::Zeroizing;
use serde_json::{Map, Value};

/// The smallest RSA modulus accepted, in bits (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

/// The size of generated RSA keys. 2048 bits is what RS256 deployments use
/// and what every verifier accepts; larger keys make every signature slower.
const GENERATED_RSA_SIZE: KeySize = KeySize::Rsa2048;

/// The smallest HS256 secret accepted: as long as the hash output (RFC 7518,
/// section 3.2).
const MIN_HS256_SECRET: usize = 32;

/// A JWS algorithm that signs access tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SigningAlgorithm {
    /// Ed25519 signatures (RFC 8037).
    EdDsa,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// HMAC with SHA-256: one secret both signs and verifies.
    Hs256,
}

impl SigningAlgorithm {
    pub const ALL: [SigningAlgorithm; 4] = [Self::EdDsa, Self::Es256, Self::Rs256, Self::Hs256];

    /// The JOSE name, as in a token's `alg` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EdDsa => "EdDSA",
            Self::Es256 => "ES256",
            Self::Rs256 => "RS256",
            Self::Hs256 => "HS256",
        }
    }

    pub fn jwt(self) -> Algorithm {
        match self {
            Self::EdDsa => Algorithm::EdDSA,
            Self::Es256 => Algorithm::ES256,
            Self::Rs256 => Algorithm::RS256,
            Self::Hs256 => Algorithm::HS256,
        }
    }

    /// Whether keys of this algorithm appear in the published key set. A
    /// symmetric key never does: whoever could read it could sign with it.
    pub fn is_published(self) -> bool {
        self != Self::Hs256
    }
}

impl FromStr for SigningAlgorithm {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|alg| alg.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|alg| alg.as_str()).collect();
                format!(
                    "unknown signing algorithm {s:?}: expected one of {}",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for SigningAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Signs tokens with one key. An RSA key is parsed once here: jsonwebtoken
/// parses and checks an RSA key for every signature, which costs more than
/// the signature itself.
#[derive(Clone)]
pub enum JwtSigner {
    Other(EncodingKey),
    Rsa(Arc<RsaKeyPair>),
}

impl JwtSigner {
    /// The compact JWS of `claims` under `header` (RFC 7515 §7.1).
    pub fn sign<T: serde::Serialize>(&self, header: &Header, claims: &T) -> anyhow::Result<String> {
        match self {
            Self::Other(key) => Ok(jsonwebtoken::encode(header, claims, key)?),
            Self::Rsa(pair) => {
                ensure!(
                    header.alg == Algorithm::RS256,
                    "an RSA key signs RS256 only"
                );
                let message = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(serde_json::to_vec(header)?),
                    URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims)?)
                );
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message.as_bytes(),
                    &mut signature,
                )
                .map_err(|_| anyhow!("RSA signing failed"))?;
                Ok(format!("{message}.{}", URL_SAFE_NO_PAD.encode(signature)))
            }
        }
    }
}

/// The public half of a key, as published.
#[derive(Clone)]
enum PublicKey {
    /// HS256: nothing is public.
    None,
    Ed25519 {
        x: Vec<u8>,
    },
    P256 {
        x: Vec<u8>,
        y: Vec<u8>,
    },
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
}

/// A private signing key (or the HS256 secret), in the form it is stored.
#[derive(Clone)]
pub struct PrivateKey {
    algorithm: SigningAlgorithm,
    /// PKCS#8 v1 DER, or the raw HS256 secret.
    stored: Zeroizing<Vec<u8>>,
    /// The same key in the form jsonwebtoken signs with.
    encoding: EncodingKey,
    public: PublicKey,
}

impl PrivateKey {
    /// A new random key: Ed25519, P-256, RSA of 2048 bits, or a 256-bit
    /// HS256 secret.
    pub fn generate(alg: SigningAlgorithm) -> anyhow::Result<Self> {
        let document: Zeroizing<Vec<u8>> = match alg {
            SigningAlgorithm::EdDsa => Ed25519KeyPair::generate()
                .and_then(|pair| pair.to_pkcs8v1())
                .map(|doc| Zeroizing::new(doc.as_ref().to_vec())),
            SigningAlgorithm::Es256 => EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                .and_then(|pair| pair.to_pkcs8v1())
                .map(|doc| Zeroizing::new(doc.as_ref().to_vec())),
            SigningAlgorithm::Rs256 => RsaKeyPair::generate(GENERATED_RSA_SIZE)
                .and_then(|pair| AsDer::<Pkcs8V1Der>::as_der(&pair))
                .map(|der| Zeroizing::new(der.as_ref().to_vec())),
            SigningAlgorithm::Hs256 => {
                let mut secret = Zeroizing::new(vec![0u8; MIN_HS256_SECRET]);
                aws_lc_rs::rand::fill(&mut secret).map(|()| secret)
            }
        }
        .map_err(|_| anyhow!("could not generate an {alg} key"))?;
        Self::load(alg, &document)
    }

    /// Imports a private key from PEM: PKCS#8 (`PRIVATE KEY`) holding an
    /// Ed25519, P-256 or RSA key, or the older `RSA PRIVATE KEY` (PKCS#1)
    /// and `EC PRIVATE KEY` (SEC 1) forms. The algorithm follows from the
    /// key. Other curves, RSA below 2048 bits, encrypted and public keys are
    /// refused.
    pub fn from_pem(pem: &str) -> anyhow::Result<Self> {
        let blocks = pem_blocks(pem)?;
        let mut private = blocks.iter().filter_map(|block| {
            let form = match block.label.as_str() {
                "PRIVATE KEY" => PemForm::Pkcs8,
                "RSA PRIVATE KEY" => PemForm::Pkcs1,
                "EC PRIVATE KEY" => PemForm::Sec1,
                _ => return None,
            };
            Some((form, &block.der))
        });
        let (form, der) = match (private.next(), private.next()) {
            (Some(only), None) => only,
            (Some(_), Some(_)) => bail!("the PEM text holds more than one private key"),
            (None, _) => return Err(no_private_key(&blocks)),
        };

        let key = match form {
            PemForm::Pkcs8 => Self::load(pkcs8_algorithm(der)?, der)?,
            PemForm::Pkcs1 => {
                check_rsa_size(der)?;
                let pair = RsaKeyPair::from_der(der)
                    .map_err(|e| anyhow!("not a usable RSA private key ({e})"))?;
                let pkcs8 = AsDer::<Pkcs8V1Der>::as_der(&pair)
                    .map_err(|_| anyhow!("could not re-encode the RSA key"))?;
                Self::load(SigningAlgorithm::Rs256, pkcs8.as_ref())?
            }
            PemForm::Sec1 => {
                if let Some(curve) = sec1_curve(der) {
                    check_curve(curve)?;
                }
                let pair =
                    EcdsaKeyPair::from_private_key_der(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
                        .map_err(|e| anyhow!("not a usable P-256 private key ({e})"))?;
                let pkcs8 = pair
                    .to_pkcs8v1()
                    .map_err(|_| anyhow!("could not re-encode the P-256 key"))?;
                Self::load(SigningAlgorithm::Es256, pkcs8.as_ref())?
            }
        };
        // A key that parses but cannot go through jsonwebtoken (an odd RSA
        // exponent, say) is refused at import, not at the first login.
        key.check_signs_and_verifies()
            .context("the imported key does not sign and verify tokens")?;
        Ok(key)
    }

    /// The key as read back from storage: the inverse of [`Self::to_stored`].
    pub fn from_stored(alg: SigningAlgorithm, bytes: Vec<u8>) -> anyhow::Result<Self> {
        let bytes = Zeroizing::new(bytes);
        Self::load(alg, &bytes).with_context(|| format!("the stored {alg} key is not usable"))
    }

    /// The bytes to store: PKCS#8 v1 DER for the asymmetric algorithms, the
    /// raw secret for HS256.
    pub fn to_stored(&self) -> Vec<u8> {
        self.stored.to_vec()
    }

    pub fn algorithm(&self) -> SigningAlgorithm {
        self.algorithm
    }

    pub fn encoding_key(&self) -> EncodingKey {
        self.encoding.clone()
    }

    /// What signs tokens with this key, ready for many signatures.
    pub fn signer(&self) -> anyhow::Result<JwtSigner> {
        Ok(match self.algorithm {
            SigningAlgorithm::Rs256 => JwtSigner::Rsa(Arc::new(
                RsaKeyPair::from_pkcs8(&self.stored)
                    .map_err(|e| anyhow!("not a usable RSA key ({e})"))?,
            )),
            _ => JwtSigner::Other(self.encoding.clone()),
        })
    }

    /// The key that verifies this key's tokens: the public key, or for
    /// HS256 the secret itself.
    pub fn decoding_key(&self) -> anyhow::Result<DecodingKey> {
        let key = match &self.public {
            PublicKey::None => DecodingKey::from_secret(&self.stored),
            PublicKey::Ed25519 { x } => DecodingKey::from_ed_components(&b64(x))?,
            PublicKey::P256 { x, y } => DecodingKey::from_ec_components(&b64(x), &b64(y))?,
            PublicKey::Rsa { n, e } => DecodingKey::from_rsa_raw_components(n, e),
        };
        Ok(key)
    }

    /// The public key as a JWK (RFC 7517, 7518, 8037) with its `kid`, `alg`
    /// and `use`, for the published key set; `None` for HS256.
    pub fn public_jwk(&self, kid: &str) -> Option<Value> {
        let members: &[(&str, Value)] = match &self.public {
            PublicKey::None => return None,
            PublicKey::Ed25519 { x } => &[
                ("kty", "OKP".into()),
                ("crv", "Ed25519".into()),
                ("x", b64(x).into()),
            ],
            PublicKey::P256 { x, y } => &[
                ("kty", "EC".into()),
                ("crv", "P-256".into()),
                ("x", b64(x).into()),
                ("y", b64(y).into()),
            ],
            PublicKey::Rsa { n, e } => &[
                ("kty", "RSA".into()),
                ("n", b64(n).into()),
                ("e", b64(e).into()),
            ],
        };
        let mut jwk: Map<String, Value> = members
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect();
        jwk.insert("kid".into(), kid.into());
        jwk.insert("alg".into(), self.algorithm.as_str().into());
        jwk.insert("use".into(), "sig".into());
        Some(Value::Object(jwk))
    }

    /// Parses `bytes` as a key of `algorithm` and puts it in canonical form.
    fn load(algorithm: SigningAlgorithm, bytes: &[u8]) -> anyhow::Result<Self> {
        let (stored, encoding, public) = match algorithm {
            SigningAlgorithm::EdDsa => {
                // Either PKCS#8 version is read (v2 also carries the public
                // key, which aws-lc checks); v1 is kept, because jsonwebtoken
                // derives a JWK only from that 48-byte form.
                let pair = Ed25519KeyPair::from_pkcs8(bytes)
                    .map_err(|e| anyhow!("not an Ed25519 private key in PKCS#8 ({e})"))?;
                let stored = pair
                    .to_pkcs8v1()
                    .map_err(|_| anyhow!("could not encode the Ed25519 key"))?;
                let stored = Zeroizing::new(stored.as_ref().to_vec());
                let public = PublicKey::Ed25519 {
                    x: pair.public_key().as_ref().to_vec(),
                };
                let encoding = EncodingKey::from_ed_der(&stored);
                (stored, encoding, public)
            }
            SigningAlgorithm::Es256 => {
                let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, bytes)
                    .map_err(|e| anyhow!("not a P-256 private key in PKCS#8 ({e})"))?;
                let stored = pair
                    .to_pkcs8v1()
                    .map_err(|_| anyhow!("could not encode the P-256 key"))?;
                let stored = Zeroizing::new(stored.as_ref().to_vec());
                // The uncompressed point: 0x04 || x || y, 32 bytes each.
                let point = pair.public_key().as_ref();
                ensure!(
                    point.len() == 65 && point[0] == 4,
                    "unexpected P-256 public key encoding"
                );
                let public = PublicKey::P256 {
                    x: point[1..33].to_vec(),
                    y: point[33..].to_vec(),
                };
                let encoding = EncodingKey::from_ec_der(&stored);
                (stored, encoding, public)
            }
            SigningAlgorithm::Rs256 => {
                if let Some(rsa_key) = pkcs8_private_key(bytes) {
                    check_rsa_size(rsa_key)?;
                }
                let pair = RsaKeyPair::from_pkcs8(bytes)
                    .map_err(|e| anyhow!("not an RSA private key in PKCS#8 ({e})"))?;
                let stored = AsDer::<Pkcs8V1Der>::as_der(&pair)
                    .map_err(|_| anyhow!("could not encode the RSA key"))?;
                let stored = Zeroizing::new(stored.as_ref().to_vec());
                // jsonwebtoken's aws-lc backend reads RSA keys with
                // `RsaKeyPair::from_der`, which takes PKCS#1 only: hand it the
                // `RSAPrivateKey` inside the PKCS#8 document.
                let pkcs1 = pkcs8_private_key(&stored)
                    .context("could not find the RSA key inside its PKCS#8 document")?;
                let encoding = EncodingKey::from_rsa_der(pkcs1);
                let components = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                let public = PublicKey::Rsa {
                    n: unsigned(&components.n).to_vec(),
                    e: unsigned(&components.e).to_vec(),
                };
                (stored, encoding, public)
            }
            SigningAlgorithm::Hs256 => {
                ensure!(
                    bytes.len() >= MIN_HS256_SECRET,
                    "an HS256 secret needs at least {MIN_HS256_SECRET} bytes, this one has {}",
                    bytes.len()
                );
                let stored = Zeroizing::new(bytes.to_vec());
                let encoding = EncodingKey::from_secret(&stored);
                (stored, encoding, PublicKey::None)
            }
        };
        Ok(Self {
            algorithm,
            stored,
            encoding,
            public,
        })
    }

    /// Signs a token and verifies it with [`Self::decoding_key`], through
    /// jsonwebtoken.
    fn check_signs_and_verifies(&self) -> anyhow::Result<()> {
        let alg = self.algorithm.jwt();
        let token = jsonwebtoken::encode(&Header::new(alg), &Map::new(), &self.encoding)?;
        let mut validation = Validation::new(alg);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        jsonwebtoken::decode::<Map<String, Value>>(&token, &self.decoding_key()?, &validation)?;
        Ok(())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A big-endian integer without leading zero bytes, as JWK wants `n` and `e`.
fn unsigned(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

// --- PEM -----------------------------------------------------------------

enum PemForm {
    Pkcs8,
    Pkcs1,
    Sec1,
}

struct PemBlock {
    label: String,
    der: Zeroizing<Vec<u8>>,
}

/// The blocks of a PEM text, decoded. Text around the blocks is ignored, as
/// OpenSSL does (it may write "Bag Attributes" and the like there).
fn pem_blocks(text: &str) -> anyhow::Result<Vec<PemBlock>> {
    let mut blocks = Vec::new();
    let mut lines = text.lines().map(str::trim);
    while let Some(line) = lines.next() {
        let Some(label) = line
            .strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
        else {
            continue;
        };
        let end = format!("-----END {label}-----");
        let mut body = Zeroizing::new(String::new());
        let mut closed = false;
        let mut encrypted = false;
        for line in lines.by_ref() {
            if line == end {
                closed = true;
                break;
            }
            ensure!(
                !line.starts_with("-----"),
                "the PEM block {label} is not closed by {end}"
            );
            // RFC 1421 headers, as in legacy encrypted keys ("Proc-Type:
            // 4,ENCRYPTED"); base64 has no colon.
            if let Some((name, value)) = line.split_once(':') {
                encrypted |=
                    name.trim().eq_ignore_ascii_case("Proc-Type") && value.contains("ENCRYPTED");
                continue;
            }
            body.push_str(line);
        }
        ensure!(closed, "the PEM block {label} has no end line ({end})");
        ensure!(
            !encrypted,
            "the {label} is encrypted; decrypt it first, e.g. `openssl pkey -in key.pem -out plain.pem`"
        );
        let der = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| anyhow!("the PEM block {label} is not valid base64"))?;
        blocks.push(PemBlock {
            label: label.to_owned(),
            der: Zeroizing::new(der),
        });
    }
    Ok(blocks)
}

/// Why a PEM text without a private key we read is refused.
fn no_private_key(blocks: &[PemBlock]) -> anyhow::Error {
    let labels: Vec<&str> = blocks.iter().map(|block| block.label.as_str()).collect();
    if labels.is_empty() {
        anyhow!("not a PEM private key: expected a block starting with -----BEGIN PRIVATE KEY-----")
    } else if labels.contains(&"ENCRYPTED PRIVATE KEY") {
        anyhow!(
            "the private key is encrypted; decrypt it first, e.g. `openssl pkey -in key.pem -out plain.pem`"
        )
    } else if labels.contains(&"OPENSSH PRIVATE KEY") {
        anyhow!(
            "this is an OpenSSH private key; convert it to PKCS#8 with `ssh-keygen -p -m PKCS8 -f <file>`"
        )
    } else if let Some(public) = labels
        .iter()
        .find(|label| matches!(**label, "PUBLIC KEY" | "RSA PUBLIC KEY" | "CERTIFICATE"))
    {
        anyhow!("this is a {public}, not a private key: signing needs the private key")
    } else {
        anyhow!(
            "no private key found (PEM blocks: {}); expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY",
            labels.join(", ")
        )
    }
}

// --- Looking inside DER ----------------------------------------------------
//
// Just enough to tell which key a container holds, so that an unsupported
// one is refused with its name; aws-lc parses and validates the keys.

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OBJECT_IDENTIFIER: u8 = 0x06;
const CONTEXT_0: u8 = 0xa0;

const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_RSASSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_X25519: &[u8] = &[0x2b, 0x65, 0x6e];
const OID_X448: &[u8] = &[0x2b, 0x65, 0x6f];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];
const OID_ED448: &[u8] = &[0x2b, 0x65, 0x71];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
const OID_SECP256K1: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x0a];

/// A cursor over DER elements.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The contents of the next element, if it has this tag.
    fn take(&mut self, tag: u8) -> Option<&'a [u8]> {
        let (&found, rest) = self.0.split_first()?;
        if found != tag {
            return None;
        }
        let (&first, mut rest) = rest.split_first()?;
        let len = match first {
            0..=0x7f => usize::from(first),
            // Long form, up to four length bytes; indefinite lengths are not DER.
            0x81..=0x84 => {
                let count = usize::from(first & 0x7f);
                if rest.len() < count {
                    return None;
                }
                let (len, after) = rest.split_at(count);
                rest = after;
                len.iter()
                    .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
            }
            _ => return None,
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        self.0 = after;
        Some(contents)
    }

    fn next_tag(&self) -> Option<u8> {
        self.0.first().copied()
    }
}

/// The `privateKey` of a PKCS#8 `PrivateKeyInfo`: for RSA, the PKCS#1
/// `RSAPrivateKey`.
fn pkcs8_private_key(pkcs8: &[u8]) -> Option<&[u8]> {
    let mut info = Der(Der(pkcs8).take(SEQUENCE)?);
    info.take(INTEGER)?;
    info.take(SEQUENCE)?;
    info.take(OCTET_STRING)
}

/// The algorithm of a PKCS#8 private key, or why it is not one we sign with.
fn pkcs8_algorithm(pkcs8: &[u8]) -> anyhow::Result<SigningAlgorithm> {
    let not_pkcs8 = || anyhow!("the PRIVATE KEY block is not a PKCS#8 private key");
    let mut info = Der(Der(pkcs8).take(SEQUENCE).ok_or_else(not_pkcs8)?);
    info.take(INTEGER).ok_or_else(not_pkcs8)?;
    let mut algorithm = Der(info.take(SEQUENCE).ok_or_else(not_pkcs8)?);
    let oid = algorithm.take(OBJECT_IDENTIFIER).ok_or_else(not_pkcs8)?;
    match oid {
        OID_ED25519 => Ok(SigningAlgorithm::EdDsa),
        OID_EC_PUBLIC_KEY => {
            let curve = algorithm
                .take(OBJECT_IDENTIFIER)
                .context("the EC private key does not name its curve")?;
            check_curve(curve)?;
            Ok(SigningAlgorithm::Es256)
        }
        OID_RSA_ENCRYPTION => {
            let rsa_key = info.take(OCTET_STRING).ok_or_else(not_pkcs8)?;
            check_rsa_size(rsa_key)?;
            Ok(SigningAlgorithm::Rs256)
        }
        OID_RSASSA_PSS => bail!("RSA-PSS keys are not supported; RS256 needs a plain RSA key"),
        OID_ED448 => bail!("Ed448 keys are not supported; use Ed25519 (EdDSA)"),
        OID_X25519 | OID_X448 => {
            bail!("this is a key-agreement key (X25519/X448), not a signing key")
        }
        other => bail!(
            "unsupported key type (algorithm {}); use Ed25519, P-256 or RSA",
            dotted(other)
        ),
    }
}

/// Refuses a curve other than P-256, by name.
fn check_curve(oid: &[u8]) -> anyhow::Result<()> {
    let name = match oid {
        OID_P256 => return Ok(()),
        OID_P384 => "P-384 (ES384)".to_owned(),
        OID_P521 => "P-521 (ES512)".to_owned(),
        OID_SECP256K1 => "secp256k1 (ES256K)".to_owned(),
        other => format!("curve {}", dotted(other)),
    };
    bail!("EC keys on {name} are not supported; only P-256 (ES256) is")
}

/// Refuses an RSA key below [`MIN_RSA_BITS`], saying its size.
fn check_rsa_size(rsa_private_key: &[u8]) -> anyhow::Result<()> {
    let bits = rsa_modulus_bits(rsa_private_key).context("not an RSA private key")?;
    ensure!(
        bits >= MIN_RSA_BITS,
        "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
    );
    Ok(())
}

/// The size of the modulus of a PKCS#1 `RSAPrivateKey`.
fn rsa_modulus_bits(rsa_private_key: &[u8]) -> Option<usize> {
    let mut key = Der(Der(rsa_private_key).take(SEQUENCE)?);
    key.take(INTEGER)?;
    let modulus = unsigned(key.take(INTEGER)?);
    let first = modulus.first()?;
    Some(modulus.len() * 8 - first.leading_zeros() as usize)
}

/// The named curve of a SEC 1 `ECPrivateKey`, when it names one.
fn sec1_curve(ec_private_key: &[u8]) -> Option<&[u8]> {
    let mut key = Der(Der(ec_private_key).take(SEQUENCE)?);
    key.take(INTEGER)?;
    key.take(OCTET_STRING)?;
    if key.next_tag() != Some(CONTEXT_0) {
        return None;
    }
    Der(key.take(CONTEXT_0)?).take(OBJECT_IDENTIFIER)
}

/// An object identifier in dotted form, for error messages.
fn dotted(oid: &[u8]) -> String {
    let mut arcs: Vec<u64> = Vec::new();
    let mut arc: u64 = 0;
    for &byte in oid {
        if arc > u64::MAX >> 7 {
            return "(malformed)".into();
        }
        arc = (arc << 7) | u64::from(byte & 0x7f);
        if byte & 0x80 == 0 {
            arcs.push(arc);
            arc = 0;
        }
    }
    let Some((&first, rest)) = arcs.split_first() else {
        return "(empty)".into();
    };
    // The first subidentifier packs the first two arcs: 40 * a + b.
    let (a, b) = match first {
        0..40 => (0, first),
        40..80 => (1, first - 40),
        _ => (2, first - 80),
    };
    std::iter::once(a)
        .chain(std::iter::once(b))
        .chain(rest.iter().copied())
        .map(|arc| arc.to_string())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use std::time::{Instant, SystemTime, UNIX_EPOCH};

    use aws_lc_rs::signature::ECDSA_P384_SHA384_FIXED_SIGNING;
    use jsonwebtoken::errors::ErrorKind;
    use jsonwebtoken::jwk::Jwk;
    use serde::{Deserialize, Serialize};

    use super::*;

    const ASYMMETRIC: [SigningAlgorithm; 3] = [
        SigningAlgorithm::EdDsa,
        SigningAlgorithm::Es256,
        SigningAlgorithm::Rs256,
    ];

    /// An RSA key of 1024 bits, made with
    /// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024`.
    const RSA_1024_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIICdwIBADANBgkqhkiG9w0BAQEFAASCAmEwggJdAgEAAoGBALUehczHg0jug3WX
19OLtzuru901O6i5dc3wlxhShAaXd5lVX0+e0jyXPkt/leImsYpYutZW34RQay8R
o0VeXgOjgnrG8s+bSqzSP0yUUO/lGq9KjAVd4NNTnsdQqdC8h/6Wjw5V79G6S1Ll
ygA8LMG37R2INDXE3bg0TyGJ8x+rAgMBAAECgYB1ltR9qEbHMfttfGDmen5DInM8
4hPSrl4aj4o5g1EuSmaeyXuw4MdUCUmrkLEJ+98mmAbto8dIS0HbdFMRdXwJPlNK
x8t9DP9PGCkBQXkL6HnZbpcJvJlWIlrniME3aTeWMJG9n9jvaBAjsAlde6HC6Tt6
xzDyG43CiJfSIK3wCQJBAOhoI/CUKJPls2U1QjpdDolTAdUeqJHYud/qMWGZpgMF
K9mGtCA0Hw55oGt3Se8WfriKt92cLoibdFQb9/T1YMcCQQDHgYFNTdrlHytUq+Jf
z52y48HvwPR+2zqyDJKv2rVeT8B9OJeeIsEu5ju6LtHsXmdFjCoMyUvdGF7/F8ni
lK39AkA3euzheKz7KYGa7ozh2+cldzBfzRLWxlMRFho1v3U3EVv3cMW9TlP/o59d
KDv5HHih21OrTqZ5LAsoLQkTbCRvAkEAi/iUW0QwO2gu4mzlmgrzvTqGKkvaPdZZ
y+l+UNrFPLH/ftthpJUFrH3jkbCfn5JsKiM4rVfdXfVnUNnDzrA5kQJBANPkDxOo
B5eDR2te9CoE96tZhtgw8KkQawiusb/BmSoMtnrd63CywuCcpuWFEhYmg/oQ0doC
NvkKOpelEobqS0A=
-----END PRIVATE KEY-----
";

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct Claims {
        sub: String,
        exp: u64,
    }

    fn claims() -> Claims {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        Claims {
            sub: "user-1".into(),
            exp: now.as_secs() + 600,
        }
    }

    fn sign(key: &PrivateKey) -> String {
        let header = Header::new(key.algorithm().jwt());
        jsonwebtoken::encode(&header, &claims(), &key.encoding_key()).unwrap()
    }

    fn verify(
        token: &str,
        alg: SigningAlgorithm,
        key: &DecodingKey,
    ) -> jsonwebtoken::errors::Result<Claims> {
        jsonwebtoken::decode::<Claims>(token, key, &Validation::new(alg.jwt())).map(|t| t.claims)
    }

    fn jwk_decoding_key(key: &PrivateKey) -> DecodingKey {
        let jwk: Jwk = serde_json::from_value(key.public_jwk("k1").unwrap()).unwrap();
        DecodingKey::from_jwk(&jwk).unwrap()
    }

    fn pem(label: &str, der: &[u8]) -> String {
        let body = STANDARD.encode(der);
        let mut text = format!("-----BEGIN {label}-----\n");
        for line in body.as_bytes().chunks(64) {
            text.push_str(std::str::from_utf8(line).unwrap());
            text.push('\n');
        }
        text.push_str(&format!("-----END {label}-----\n"));
        text
    }

    fn error_of<T: fmt::Debug>(result: anyhow::Result<T>) -> String {
        format!("{:#}", result.unwrap_err())
    }

    #[test]
    fn algorithms_parse_from_their_jose_names_in_any_case() {
        for alg in SigningAlgorithm::ALL {
            assert_eq!(alg.as_str().parse::<SigningAlgorithm>(), Ok(alg));
            assert_eq!(alg.to_string().to_lowercase().parse(), Ok(alg));
            assert_eq!(alg.as_str().to_uppercase().parse(), Ok(alg));
            assert_eq!(alg.is_published(), alg != SigningAlgorithm::Hs256);
        }
        let error = "RS512".parse::<SigningAlgorithm>().unwrap_err();
        assert!(error.contains("EdDSA, ES256, RS256, HS256"), "{error}");
        assert!("".parse::<SigningAlgorithm>().is_err());
    }

    #[test]
    fn every_algorithm_survives_storage_and_signs_tokens_its_public_key_verifies() {
        for alg in SigningAlgorithm::ALL {
            let generated = PrivateKey::generate(alg).unwrap();
            assert_eq!(generated.algorithm(), alg);
            let stored = generated.to_stored();
            let key = PrivateKey::from_stored(alg, stored.clone()).unwrap();
            assert_eq!(key.to_stored(), stored, "{alg}: storage is canonical");

            let token = sign(&key);
            let header = jsonwebtoken::decode_header(&token).unwrap();
            assert_eq!(header.alg, alg.jwt());
            assert_eq!(
                verify(&token, alg, &key.decoding_key().unwrap()).unwrap(),
                claims()
            );
            assert_eq!(
                verify(&token, alg, &generated.decoding_key().unwrap()).unwrap(),
                claims()
            );
            if alg.is_published() {
                assert_eq!(
                    verify(&token, alg, &jwk_decoding_key(&key)).unwrap(),
                    claims()
                );
            } else {
                assert!(key.public_jwk("k1").is_none());
            }
        }
    }

    #[test]
    fn stored_forms_are_pkcs8_v1_or_the_raw_secret() {
        let ed = PrivateKey::generate(SigningAlgorithm::EdDsa)
            .unwrap()
            .to_stored();
        // PKCS#8 v1 of Ed25519 (RFC 8410): 16 bytes of structure, 32 of seed.
        assert_eq!(ed.len(), 48);
        assert_eq!(ed[..7], [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05]);
        for alg in [SigningAlgorithm::Es256, SigningAlgorithm::Rs256] {
            let der = PrivateKey::generate(alg).unwrap().to_stored();
            let mut info = Der(Der(&der).take(SEQUENCE).unwrap());
            assert_eq!(info.take(INTEGER), Some(&[0u8][..]), "{alg}: version 1");
            assert_eq!(pkcs8_algorithm(&der).unwrap(), alg);
        }
        let secret = PrivateKey::generate(SigningAlgorithm::Hs256)
            .unwrap()
            .to_stored();
        assert_eq!(secret.len(), 32);
    }

    #[test]
    fn the_public_jwk_holds_the_public_members_and_no_private_one() {
        for alg in ASYMMETRIC {
            let key = PrivateKey::generate(alg).unwrap();
            let jwk = key.public_jwk("key-7").unwrap();
            let members = jwk.as_object().unwrap();
            assert_eq!(members["kid"], "key-7");
            assert_eq!(members["alg"], alg.as_str());
            assert_eq!(members["use"], "sig");
            for private in ["d", "p", "q", "dp", "dq", "qi", "k", "oth"] {
                assert!(!members.contains_key(private), "{alg}: {private} in {jwk}");
            }
            let mut names: Vec<&str> = members.keys().map(String::as_str).collect();
            names.sort_unstable();
            let expected: &[&str] = match alg {
                SigningAlgorithm::EdDsa => &["alg", "crv", "kid", "kty", "use", "x"],
                SigningAlgorithm::Es256 => &["alg", "crv", "kid", "kty", "use", "x", "y"],
                _ => &["alg", "e", "kid", "kty", "n", "use"],
            };
            assert_eq!(names, expected, "{alg}");
            match alg {
                SigningAlgorithm::EdDsa => {
                    assert_eq!(members["kty"], "OKP");
                    assert_eq!(members["crv"], "Ed25519");
                    assert_eq!(members["x"].as_str().unwrap().len(), 43);
                }
                SigningAlgorithm::Es256 => {
                    assert_eq!(members["kty"], "EC");
                    assert_eq!(members["crv"], "P-256");
                    assert_eq!(members["x"].as_str().unwrap().len(), 43);
                    assert_eq!(members["y"].as_str().unwrap().len(), 43);
                }
                _ => {
                    assert_eq!(members["kty"], "RSA");
                    assert_eq!(members["e"], "AQAB");
                    // 2048 bits, no leading zero byte: 256 bytes, 342 characters.
                    assert_eq!(members["n"].as_str().unwrap().len(), 342);
                }
            }
        }
    }

    #[test]
    fn jsonwebtoken_derives_the_same_public_jwk_from_the_encoding_key() {
        // This would fail on a PKCS#8 v2 Ed25519 key or a PKCS#8 RSA key.
        for alg in ASYMMETRIC {
            let key = PrivateKey::generate(alg).unwrap();
            let theirs = Jwk::from_encoding_key(&key.encoding_key(), alg.jwt()).unwrap();
            let theirs = serde_json::to_value(theirs).unwrap();
            let ours = key.public_jwk("k1").unwrap();
            for member in ["kty", "crv", "x", "y", "n", "e"] {
                assert_eq!(ours.get(member), theirs.get(member), "{alg}: {member}");
            }
        }
    }

    #[test]
    fn a_token_signed_by_another_key_of_the_same_algorithm_is_refused() {
        for alg in SigningAlgorithm::ALL {
            let signer = PrivateKey::generate(alg).unwrap();
            let other = PrivateKey::generate(alg).unwrap();
            let token = sign(&signer);
            let error = verify(&token, alg, &other.decoding_key().unwrap()).unwrap_err();
            assert_eq!(*error.kind(), ErrorKind::InvalidSignature, "{alg}");
            if alg.is_published() {
                let error = verify(&token, alg, &jwk_decoding_key(&other)).unwrap_err();
                assert_eq!(*error.kind(), ErrorKind::InvalidSignature, "{alg}");
            }
        }
    }

    #[test]
    fn pkcs8_pem_imports_as_the_same_key_for_each_asymmetric_algorithm() {
        for alg in ASYMMETRIC {
            let key = PrivateKey::generate(alg).unwrap();
            let imported = PrivateKey::from_pem(&pem("PRIVATE KEY", &key.to_stored())).unwrap();
            assert_eq!(imported.algorithm(), alg);
            assert_eq!(imported.to_stored(), key.to_stored());
            assert_eq!(imported.public_jwk("k"), key.public_jwk("k"));
            let token = sign(&imported);
            assert!(verify(&token, alg, &key.decoding_key().unwrap()).is_ok());
        }
    }

    #[test]
    fn the_older_pem_forms_and_pkcs8_v2_import_in_canonical_form() {
        // Ed25519 PKCS#8 v2, with the public key, as aws-lc generates by default.
        let v2 = Ed25519KeyPair::generate().unwrap().to_pkcs8().unwrap();
        assert!(v2.as_ref().len() > 48);
        let key = PrivateKey::from_pem(&pem("PRIVATE KEY", v2.as_ref())).unwrap();
        assert_eq!(key.algorithm(), SigningAlgorithm::EdDsa);
        assert_eq!(key.to_stored().len(), 48);
        assert_eq!(
            Ed25519KeyPair::from_pkcs8(v2.as_ref())
                .unwrap()
                .public_key()
                .as_ref(),
            Ed25519KeyPair::from_pkcs8(&key.to_stored())
                .unwrap()
                .public_key()
                .as_ref(),
        );

        // PKCS#1 RSA.
        let rsa = PrivateKey::generate(SigningAlgorithm::Rs256).unwrap();
        let pkcs1 = pkcs8_private_key(&rsa.stored).unwrap();
        let key = PrivateKey::from_pem(&pem("RSA PRIVATE KEY", pkcs1)).unwrap();
        assert_eq!(key.algorithm(), SigningAlgorithm::Rs256);
        assert_eq!(key.to_stored(), rsa.to_stored());

        // SEC 1 P-256, after the parameters block `openssl ecparam -genkey` writes.
        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let sec1 = AsDer::<aws_lc_rs::encoding::EcPrivateKeyRfc5915Der>::as_der(&ec.private_key())
            .unwrap();
        let params = pem(
            "EC PARAMETERS",
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07],
        );
        let text = format!("{params}{}", pem("EC PRIVATE KEY", sec1.as_ref()));
        let key = PrivateKey::from_pem(&text).unwrap();
        assert_eq!(key.algorithm(), SigningAlgorithm::Es256);
        assert_eq!(key.to_stored(), ec.to_pkcs8v1().unwrap().as_ref());
    }

    #[test]
    fn unsupported_keys_and_garbage_are_refused_with_a_reason() {
        let error = error_of(PrivateKey::from_pem(RSA_1024_PEM));
        assert!(error.contains("1024 bits"), "{error}");

        let p384 = EcdsaKeyPair::generate(&ECDSA_P384_SHA384_FIXED_SIGNING).unwrap();
        let p384 = pem("PRIVATE KEY", p384.to_pkcs8v1().unwrap().as_ref());
        let error = error_of(PrivateKey::from_pem(&p384));
        assert!(error.contains("P-384"), "{error}");

        let ec = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
        let public = pem("PUBLIC KEY", ec.public_key().as_der().unwrap().as_ref());
        let error = error_of(PrivateKey::from_pem(&public));
        assert!(error.contains("not a private key"), "{error}");

        let encrypted = pem("ENCRYPTED PRIVATE KEY", &[0x30, 0x00]);
        let error = error_of(PrivateKey::from_pem(&encrypted));
        assert!(error.contains("encrypted"), "{error}");

        let two = format!(
            "{}{}",
            pem(
                "PRIVATE KEY",
                &PrivateKey::generate(SigningAlgorithm::EdDsa)
                    .unwrap()
                    .stored
            ),
            pem(
                "PRIVATE KEY",
                &PrivateKey::generate(SigningAlgorithm::EdDsa)
                    .unwrap()
                    .stored
            ),
        );
        let error = error_of(PrivateKey::from_pem(&two));
        assert!(error.contains("more than one"), "{error}");

        for garbage in [
            "",
            "not a key",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n",
            "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nMAA=\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nMIIBAAIBADANBgkqhkiG9w0BAQEFAASB\n-----END PRIVATE KEY-----\n",
            "-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----\n",
            "-----BEGIN EC PRIVATE KEY-----\nMAA=\n-----END EC PRIVATE KEY-----\n",
        ] {
            assert!(PrivateKey::from_pem(garbage).is_err(), "{garbage:?}");
        }
        // Every prefix of a good key is refused, none panics.
        let der = PrivateKey::generate(SigningAlgorithm::Es256)
            .unwrap()
            .to_stored();
        for len in 0..der.len() {
            assert!(PrivateKey::from_pem(&pem("PRIVATE KEY", &der[..len])).is_err());
        }
    }

    #[test]
    fn stored_bytes_must_be_a_key_of_the_stated_algorithm() {
        let ed = PrivateKey::generate(SigningAlgorithm::EdDsa)
            .unwrap()
            .to_stored();
        let ec = PrivateKey::generate(SigningAlgorithm::Es256)
            .unwrap()
            .to_stored();
        assert!(PrivateKey::from_stored(SigningAlgorithm::Es256, ed.clone()).is_err());
        assert!(PrivateKey::from_stored(SigningAlgorithm::Rs256, ed.clone()).is_err());
        assert!(PrivateKey::from_stored(SigningAlgorithm::EdDsa, ec.clone()).is_err());
        assert!(PrivateKey::from_stored(SigningAlgorithm::EdDsa, ed[..40].to_vec()).is_err());
        assert!(PrivateKey::from_stored(SigningAlgorithm::Hs256, vec![7; 16]).is_err());
        assert!(PrivateKey::from_stored(SigningAlgorithm::Rs256, Vec::new()).is_err());
    }

    #[test]
    fn debug_prints_the_algorithm_and_no_key_bytes() {
        for alg in SigningAlgorithm::ALL {
            let key = PrivateKey::generate(alg).unwrap();
            let printed = format!("{key:?}");
            assert_eq!(printed, format!("PrivateKey {{ algorithm: {alg:?}, .. }}"));
            let stored = key.to_stored();
            assert!(!printed.contains(&STANDARD.encode(&stored)));
            assert!(!printed.contains(&format!("{:?}", &stored[..8])));
        }
    }

    #[test]
    fn keys_can_be_shared_between_threads() {
        fn shared<T: Send + Sync + 'static>() {}
        shared::<PrivateKey>();
        shared::<SigningAlgorithm>();
    }

    #[test]
    fn object_identifiers_print_dotted() {
        assert_eq!(dotted(OID_RSA_ENCRYPTION), "1.2.840.113549.1.1.1");
        assert_eq!(dotted(OID_ED25519), "1.3.101.112");
        assert_eq!(dotted(OID_P384), "1.3.132.0.34");
        assert_eq!(dotted(&[]), "(empty)");
    }

    /// How long key generation takes in this build; RSA is the slow one.
    /// `cargo test --lib crypto::signing -- --ignored --nocapture generation_time`
    #[test]
    #[ignore = "a measurement, not a check"]
    fn generation_time_is_reported() {
        for alg in SigningAlgorithm::ALL {
            let rounds = if alg == SigningAlgorithm::Rs256 {
                10
            } else {
                100
            };
            let start = Instant::now();
            for _ in 0..rounds {
                PrivateKey::generate(alg).unwrap();
            }
            let each = start.elapsed() / rounds;
            println!("{alg}: {each:?} per key");
        }
        for (size, bits) in [(KeySize::Rsa3072, 3072), (KeySize::Rsa4096, 4096)] {
            let rounds = 5;
            let start = Instant::now();
            for _ in 0..rounds {
                RsaKeyPair::generate(size).unwrap();
            }
            println!("RSA {bits}: {:?} per key", start.elapsed() / rounds);
        }
    }
}
