//! Making the cluster's certificates, in-process with rcgen (ECDSA P-256; no openssl): one CA,
//! and a certificate per process naming it `spiffe://registro/ROLE/NAME` (see [`crate::tls`]).
//! `client tls ca` and `client tls cert` write them; tests make theirs with the same functions.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

use crate::tls::{Identity, Role};

/// How long a new CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a new process certificate is valid by default (825 days, the longest that
/// browsers and most tools still accept for a leaf).
pub const DEFAULT_VALIDITY_DAYS: u32 = 825;

/// Why a certificate cannot be made or written.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0:?} is not a valid name: use letters, digits, '.', '-' and '_'")]
    Name(String),
    #[error("{0:?} is not a valid host name or IP address")]
    Host(String),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no CA in {}: make one first with `client tls ca --dir {}`", dir.display(), dir.display())]
    NoCa { dir: PathBuf },
}

/// A certificate and its private key, in PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// When a certificate is valid: from an hour ago (clocks differ a little) for `duration`.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago until `duration` from now.
    pub fn from_now(duration: Duration) -> Self {
        let now = OffsetDateTime::now_utc();
        Self {
            not_before: now - Duration::from_secs(3600),
            not_after: now + duration,
        }
    }
}

/// A new CA certificate and key.
pub fn new_ca(validity: Validity) -> Result<Pem, Error> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        // A name of its own, so a certificate of another cluster's CA reads "unknown issuer".
        .push(
            DnType::CommonName,
            format!("registro CA {:08x}", rand::random::<u32>()),
        );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.self_signed(&key)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

/// A certificate for `identity`, signed by `ca`: `identity.name` and every `hosts` entry as DNS
/// or IP subject names (what dialling peers check), `spiffe://registro/ROLE/NAME` as a URI
/// subject name (what [`crate::auth`] checks), usable as both TLS server and client.
pub fn issue(
    ca: &Pem,
    identity: &Identity,
    hosts: &[String],
    validity: Validity,
) -> Result<Pem, Error> {
    check_name(&identity.name)?;
    let ca_key = KeyPair::from_pem(&ca.key)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert, ca_key)?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, identity.name.as_str());
    let mut names: Vec<&String> = vec![&identity.name];
    names.extend(hosts.iter().filter(|h| **h != identity.name));
    for name in names {
        params.subject_alt_names.push(subject_name(name)?);
    }
    params
        .subject_alt_names
        .push(SanType::URI(identity.uri().try_into()?));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pem {
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::Name(name.to_string()))
    }
}

fn subject_name(host: &str) -> Result<SanType, Error> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    check_name(host).map_err(|_| Error::Host(host.to_string()))?;
    Ok(SanType::DnsName(
        host.try_into().map_err(|_| Error::Host(host.to_string()))?,
    ))
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Written,
    /// The files were there already and were left alone.
    Kept,
}

/// `DIR/ca.pem` and `DIR/ca-key.pem`.
pub fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca-key.pem"))
}

/// `DIR/NAME.pem` and `DIR/NAME-key.pem`.
pub fn cert_paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}-key.pem")),
    )
}

/// Writes a new CA into `dir` unless one is there already (`force` replaces it; every
/// certificate it signed then stops being trusted).
pub fn write_ca(dir: &Path, force: bool) -> Result<Outcome, Error> {
    let (cert, key) = ca_paths(dir);
    if !force && cert.exists() && key.exists() {
        return Ok(Outcome::Kept);
    }
    let pem = new_ca(Validity::from_now(CA_VALIDITY))?;
    write_pair(dir, &cert, &key, &pem)?;
    Ok(Outcome::Written)
}

/// Writes a certificate for `identity` signed by the CA in `dir`, unless one by that name is
/// there already (`force` replaces it).
pub fn write_cert(
    dir: &Path,
    identity: &Identity,
    hosts: &[String],
    days: u32,
    force: bool,
) -> Result<Outcome, Error> {
    check_name(&identity.name)?;
    let (cert, key) = cert_paths(dir, &identity.name);
    if !force && cert.exists() && key.exists() {
        return Ok(Outcome::Kept);
    }
    let (ca_cert, ca_key) = ca_paths(dir);
    if !ca_cert.exists() || !ca_key.exists() {
        return Err(Error::NoCa {
            dir: dir.to_path_buf(),
        });
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let ca = Pem {
        cert: read(&ca_cert)?,
        key: read(&ca_key)?,
    };
    let validity = Validity::from_now(Duration::from_secs(u64::from(days) * 24 * 3600));
    let pem = issue(&ca, identity, hosts, validity)?;
    write_pair(dir, &cert, &key, &pem)?;
    Ok(Outcome::Written)
}

/// Writes the key (mode 0600) and then the certificate, each through a temporary file renamed
/// into place, so a reader never sees half a file.
fn write_pair(dir: &Path, cert: &Path, key: &Path, pem: &Pem) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    write_file(key, pem.key.as_bytes(), 0o600)?;
    write_file(cert, pem.cert.as_bytes(), 0o644)
}

fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), Error> {
    let error = |source| Error::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(error)?;
    file.write_all(contents).map_err(error)?;
    file.sync_all().map_err(error)?;
    std::fs::rename(&tmp, path).map_err(error)
}

/// The role a `client tls cert --role` names.
pub fn identity(role: Role, name: &str) -> Identity {
    Identity {
        role,
        name: name.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issued_certificate_names_its_identity_and_hosts() {
        let ca = new_ca(Validity::from_now(CA_VALIDITY)).unwrap();
        let id = identity(Role::Datanode, "datanode1");
        let pem = issue(
            &ca,
            &id,
            &["localhost".into(), "127.0.0.1".into()],
            Validity::from_now(Duration::from_secs(3600)),
        )
        .unwrap();
        let der = rustls::pki_types::pem::PemObject::from_pem_slice(pem.cert.as_bytes())
            .map(|c: rustls::pki_types::CertificateDer<'static>| c.to_vec())
            .unwrap();
        assert_eq!(crate::tls::identity_of(&der), Ok(id));
        crate::tls::Tls::from_pem(ca.cert.as_bytes(), pem.cert.as_bytes(), pem.key.as_bytes())
            .unwrap();
    }

    #[test]
    fn a_ca_file_that_is_not_a_certificate_is_refused_at_load() {
        let ca = new_ca(Validity::from_now(CA_VALIDITY)).unwrap();
        let id = identity(Role::Headnode, "headnode");
        let pem = issue(&ca, &id, &[], Validity::from_now(Duration::from_secs(3600))).unwrap();
        let garbage =
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n";
        let error =
            crate::tls::Tls::from_pem(garbage.as_bytes(), pem.cert.as_bytes(), pem.key.as_bytes())
                .unwrap_err();
        assert_eq!(
            error.to_string(),
            "<ca> cannot be parsed as an X.509 certificate"
        );
    }

    #[test]
    fn names_that_cannot_be_in_a_spiffe_uri_are_refused() {
        let ca = new_ca(Validity::from_now(CA_VALIDITY)).unwrap();
        let v = Validity::from_now(Duration::from_secs(3600));
        assert!(issue(&ca, &identity(Role::Client, "a/b"), &[], v).is_err());
        assert!(issue(&ca, &identity(Role::Client, ""), &[], v).is_err());
    }

    #[test]
    fn keys_are_written_for_the_owner_only_and_the_ca_is_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(write_ca(dir.path(), false).unwrap(), Outcome::Written);
        let ca = std::fs::read(dir.path().join("ca.pem")).unwrap();
        assert_eq!(write_ca(dir.path(), false).unwrap(), Outcome::Kept);
        assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
        let id = identity(Role::Client, "client");
        assert_eq!(
            write_cert(dir.path(), &id, &[], 1, false).unwrap(),
            Outcome::Written
        );
        for key in ["ca-key.pem", "client-key.pem"] {
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
        assert_eq!(write_ca(dir.path(), true).unwrap(), Outcome::Written);
        assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca);
    }
}
