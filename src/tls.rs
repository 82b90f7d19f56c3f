//! Mutual TLS: the cluster's certificates, loaded from files, and who a peer certificate says it is.
//!
//! Every certificate of a cluster is signed by one CA (`client tls ca`) and names its holder with
//! a URI subject name `spiffe://registro/ROLE/NAME` (`client tls cert`). Servers require such a
//! certificate from every caller ([`Tls::server_config`]) and [`crate::auth`] decides what its
//! role may call; every dial presents this process's own ([`Tls::client_config`]).
//!
//! [`explain`] turns the usual TLS failures into one sentence a person can act on.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, ServerTlsConfig};

/// The URI subject name every registro certificate carries, before `ROLE/NAME`.
pub const SPIFFE_PREFIX: &str = "spiffe://registro/";

/// How long a TLS handshake may take before the server drops the connection, so a peer that
/// opens connections and never finishes the handshake cannot pile them up.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What a certificate's holder is in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The front door: forwards Stores to datanodes and probes them.
    Headnode,
    /// Stores messages; registers itself with the headnode.
    Datanode,
    /// A user: Store, List, Status.
    Client,
}

impl Role {
    /// The word in `spiffe://registro/ROLE/NAME`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Headnode => "headnode",
            Role::Datanode => "datanode",
            Role::Client => "client",
        }
    }

    fn parse(word: &str) -> Option<Self> {
        [Role::Headnode, Role::Datanode, Role::Client]
            .into_iter()
            .find(|r| r.as_str() == word)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who a certificate says its holder is: `spiffe://registro/ROLE/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub role: Role,
    pub name: String,
}

impl Identity {
    /// The certificate's URI subject name.
    pub fn uri(&self) -> String {
        format!("{SPIFFE_PREFIX}{}/{}", self.role, self.name)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.uri())
    }
}

/// Why a certificate names no registro identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the certificate cannot be parsed")]
    Unparsable,
    #[error("the certificate has no {SPIFFE_PREFIX}ROLE/NAME subject name")]
    Missing,
    #[error("the certificate has more than one {SPIFFE_PREFIX}… subject name")]
    Ambiguous,
    #[error("{0:?} is not {SPIFFE_PREFIX}ROLE/NAME with ROLE headnode, datanode or client")]
    Malformed(String),
}

/// The registro identity in a DER certificate's URI subject names.
pub fn identity_of(der: &[u8]) -> Result<Identity, IdentityError> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|_| IdentityError::Unparsable)?;
    let names = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparsable)?
        .map(|ext| ext.value.general_names.clone())
        .unwrap_or_default();
    let mut ours = names.iter().filter_map(|n| match n {
        GeneralName::URI(uri) => uri.strip_prefix(SPIFFE_PREFIX).map(|rest| (uri, rest)),
        _ => None,
    });
    let (uri, rest) = ours.next().ok_or(IdentityError::Missing)?;
    if ours.next().is_some() {
        return Err(IdentityError::Ambiguous);
    }
    let malformed = || IdentityError::Malformed(uri.to_string());
    let (role, name) = rest.split_once('/').ok_or_else(malformed)?;
    let role = Role::parse(role).ok_or_else(malformed)?;
    if name.is_empty() || name.contains('/') {
        return Err(malformed());
    }
    Ok(Identity {
        role,
        name: name.to_string(),
    })
}

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("--tls-ca, --tls-cert and --tls-key go together: {0} is missing")]
    Incomplete(&'static str),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} has expired (valid until {not_after}): make a new one with `client tls cert`", path.display())]
    Expired { path: PathBuf, not_after: String },
    #[error("{} is not valid yet (from {not_before}): is this machine's clock right?", path.display())]
    NotYetValid { path: PathBuf, not_before: String },
    #[error("{} cannot be parsed as an X.509 certificate", path.display())]
    Unparsable { path: PathBuf },
    #[error("{} holds no usable PEM private key: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("{} does not belong to the key in {}: {reason}", cert.display(), key.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
}

/// `--tls-ca`, `--tls-cert`, `--tls-key`, shared by every program.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TlsArgs {
    /// The cluster's CA certificate (PEM): peers must present a certificate it signed. With the
    /// next two, every listener requires mutual TLS and every dial uses it.
    #[arg(long, global = true, env = "REGISTRO_TLS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// This process's certificate (PEM), signed by the CA, naming spiffe://registro/ROLE/NAME.
    #[arg(long, global = true, env = "REGISTRO_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, global = true, env = "REGISTRO_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The TLS configuration these flags name: `None` when none is given (plaintext), an error
    /// when only some are or the files cannot be used. Reads the files: call it at start-up.
    pub fn load(&self) -> Result<Option<Tls>, Error> {
        match (&self.tls_ca, &self.tls_cert, &self.tls_key) {
            (None, None, None) => Ok(None),
            (Some(ca), Some(cert), Some(key)) => Tls::load(ca, cert, key).map(Some),
            (None, _, _) => Err(Error::Incomplete("--tls-ca")),
            (_, None, _) => Err(Error::Incomplete("--tls-cert")),
            (_, _, None) => Err(Error::Incomplete("--tls-key")),
        }
    }
}

/// A process's TLS material: the CA it trusts and the certificate and key it presents.
/// Cheap to clone.
#[derive(Clone)]
pub struct Tls(Arc<Material>);

struct Material {
    ca: Certificate,
    identity: tonic::transport::Identity,
    /// The dialling side for transports on rustls itself ([`crate::direct`]).
    rustls_client: Arc<rustls::ClientConfig>,
    /// Who this process's own certificate says it is, if it names a registro identity.
    own: Result<Identity, IdentityError>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        match &self.0.own {
            Ok(id) => write!(f, "Tls({id})"),
            Err(e) => write!(f, "Tls(<{e}>)"),
        }
    }
}

impl Tls {
    /// Reads and checks the three PEM files (blocking file reads: start-up only).
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, Error> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| Error::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        Self::from_pem_files((ca, &read(ca)?), (cert, &read(cert)?), (key, &read(key)?))
    }

    /// The same from PEM text already in memory (tests, generated certificates).
    pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<Self, Error> {
        Self::from_pem_files(
            (Path::new("<ca>"), ca),
            (Path::new("<cert>"), cert),
            (Path::new("<key>"), key),
        )
    }

    fn from_pem_files(
        (ca_path, ca): (&Path, &[u8]),
        (cert_path, cert): (&Path, &[u8]),
        (key_path, key): (&Path, &[u8]),
    ) -> Result<Self, Error> {
        let certificates = |path: &Path, pem: &[u8]| {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .collect::<Result<_, _>>()
                .unwrap_or_default();
            if certs.is_empty() {
                Err(Error::NoCertificate {
                    path: path.to_path_buf(),
                })
            } else {
                Ok(certs)
            }
        };
        let roots = certificates(ca_path, ca)?;
        let chain = certificates(cert_path, cert)?;
        check_validity(cert_path, &chain[0])?;
        let private = PrivateKeyDer::from_pem_slice(key).map_err(|e| Error::BadKey {
            path: key_path.to_path_buf(),
            reason: e.to_string(),
        })?;
        // Checked here so a wrong file is one clear error at start-up, not a failed handshake.
        let provider = rustls::crypto::ring::default_provider();
        let mismatch = |e: rustls::Error| Error::Mismatch {
            cert: cert_path.to_path_buf(),
            key: key_path.to_path_buf(),
            reason: e.to_string(),
        };
        rustls::sign::CertifiedKey::from_der(chain.clone(), private.clone_key(), &provider)
            .map_err(mismatch)?;
        let mut trusted = rustls::RootCertStore::empty();
        for root in roots {
            trusted.add(root).map_err(|_| Error::Unparsable {
                path: ca_path.to_path_buf(),
            })?;
        }
        let rustls_client = rustls_client(trusted, chain.clone(), private).map_err(mismatch)?;
        Ok(Self(Arc::new(Material {
            ca: Certificate::from_pem(ca),
            identity: tonic::transport::Identity::from_pem(cert, key),
            rustls_client,
            own: identity_of(&chain[0]),
        })))
    }

    /// Who this process's certificate says it is.
    pub fn identity(&self) -> Result<&Identity, &IdentityError> {
        self.0.own.as_ref()
    }

    /// Logs which identity a `role` process runs as, and warns when its certificate names
    /// another role: its calls would be refused with PERMISSION_DENIED.
    pub fn log_identity(&self, role: Role) {
        match self.identity() {
            Ok(id) if id.role == role => {
                tracing::info!(identity = %id, "mutual TLS: only certificates of the cluster's CA get in")
            }
            Ok(id) => {
                tracing::warn!(identity = %id, expected = %role, "mutual TLS: this certificate is not for a {role}; peers will refuse calls that need the {role} role")
            }
            Err(e) => {
                tracing::warn!(error = %e, "mutual TLS: this certificate names no role; peers will refuse calls that need one")
            }
        }
    }

    /// [`Tls::client_config`] as a rustls configuration, for [`crate::direct`].
    pub fn rustls_client(&self) -> Arc<rustls::ClientConfig> {
        self.0.rustls_client.clone()
    }

    /// The server side: this certificate, and a client certificate signed by the CA required
    /// on every connection.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.0.identity.clone())
            .client_ca_root(self.0.ca.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }

    /// The dialling side: the server must present a certificate signed by the CA for the host
    /// dialled; this process presents its own.
    pub fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(self.0.ca.clone())
            .identity(self.0.identity.clone())
            .timeout(HANDSHAKE_TIMEOUT)
    }
}

/// The same as [`Tls::client_config`] for rustls itself: servers of a CA in `roots`, this
/// process's `chain` and `key` presented, HTTP/2 by ALPN, ring as the provider.
fn rustls_client(
    roots: rustls::RootCertStore,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A certificate out of its validity period is refused at start-up with the reason, rather
/// than by every peer with a terse alert.
fn check_validity(path: &Path, der: &[u8]) -> Result<(), Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|_| Error::Unparsable {
        path: path.to_path_buf(),
    })?;
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now > validity.not_after {
        return Err(Error::Expired {
            path: path.to_path_buf(),
            not_after: validity.not_after.to_string(),
        });
    }
    if now < validity.not_before {
        return Err(Error::NotYetValid {
            path: path.to_path_buf(),
            not_before: validity.not_before.to_string(),
        });
    }
    Ok(())
}

/// Logs, once at start-up, what running without TLS allows.
pub fn warn_plaintext() {
    tracing::warn!(
        "no --tls-ca/--tls-cert/--tls-key: plaintext gRPC; anyone who can reach this port can register a datanode, store and read every message, and call a datanode directly"
    );
}

/// One sentence for the usual TLS mistakes found anywhere in `error`'s chain, or `None` when
/// it is none of them. `tls_configured` says whether this side dialled with TLS.
///
/// rustls errors come typed from the handshake, but an alert read after it (TLS 1.3 servers check
/// the client's certificate once the client thinks the handshake is done) reaches us as text, and
/// sometimes only as "connection closed"; both are handled.
pub fn explain(error: &(dyn std::error::Error + 'static), tls_configured: bool) -> Option<String> {
    use rustls::AlertDescription as Alert;
    // Alerts that arrive as text, in the words rustls renders them with.
    let alerts = [
        Alert::UnknownCA,
        Alert::CertificateExpired,
        Alert::CertificateRequired,
        Alert::BadCertificate,
        Alert::DecryptError,
    ]
    .map(rustls::Error::AlertReceived);
    for e in chain(error) {
        if let Some(status) = e.downcast_ref::<tonic::Status>()
            && status.code() == tonic::Code::PermissionDenied
        {
            return Some(format!(
                "permission denied: {}",
                crate::one_line(status.message())
            ));
        }
        if let Some(sentence) = e.downcast_ref::<rustls::Error>().and_then(tls_sentence) {
            return Some(sentence.to_string());
        }
        let text = e.to_string();
        if let Some(sentence) = alerts
            .iter()
            .find(|alert| text.contains(&alert.to_string()))
            .and_then(tls_sentence)
        {
            return Some(sentence.to_string());
        }
    }
    let closed = chain(error).any(|e| {
        let text = e.to_string();
        CLOSED.iter().any(|words| text.contains(words))
    });
    match (closed, tls_configured) {
        (false, _) => None,
        (true, true) => Some(
            "the server closed the connection after the TLS handshake: it did not accept this certificate (not signed by the cluster's CA, or expired?)".into(),
        ),
        (true, false) => Some(
            "the server closed a plaintext connection: if it runs mutual TLS, give --tls-ca, --tls-cert and --tls-key (or REGISTRO_TLS_CA, REGISTRO_TLS_CERT, REGISTRO_TLS_KEY)".into(),
        ),
    }
}

/// How hyper and h2 say that the peer hung up or spoke something else.
const CLOSED: &[&str] = &[
    "connection closed",
    "connection reset",
    "connection was not ready",
    "broken pipe",
    "frame with invalid size",
    "protocol error",
];

fn tls_sentence(error: &rustls::Error) -> Option<&'static str> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
    Some(match error {
        Error::InvalidCertificate(Cert::UnknownIssuer | Cert::BadSignature) => {
            "the server's certificate is not signed by the CA in --tls-ca (unknown issuer): use the cluster's ca.pem"
        }
        Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            "the server's certificate has expired: give the server a new one (client tls cert)"
        }
        Error::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            "the server's certificate does not name the host dialled: dial a name in its certificate, or add one with client tls cert --host"
        }
        Error::AlertReceived(Alert::UnknownCA | Alert::DecryptError) => {
            "the server does not trust this certificate: --tls-cert is not signed by the cluster's CA (unknown CA)"
        }
        Error::AlertReceived(Alert::CertificateExpired) => {
            "the server refused this certificate because it has expired: make a new one (client tls cert)"
        }
        Error::AlertReceived(Alert::CertificateRequired) => {
            "the server requires a client certificate: give --tls-cert and --tls-key"
        }
        Error::AlertReceived(Alert::BadCertificate) => {
            "the server refused this certificate (bad certificate): make it with client tls cert, signed by the cluster's CA"
        }
        Error::InvalidMessage(_) => {
            "the server does not speak TLS: it runs without certificates, so dial it with http:// and no --tls-* (or check the port)"
        }
        _ => return None,
    })
}

/// `error` and its sources, looking inside `io::Error`s too (whose `source` skips the error
/// they wrap, which is where rustls puts its own).
fn chain<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let mut next = Some(error);
    std::iter::from_fn(move || {
        let current = next?;
        next = match current.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => current.source(),
        };
        Some(current)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::{AlertDescription as Alert, CertificateError as Cert};

    /// A rustls error as the transport hands it over: inside an io::Error, inside a Status.
    fn wrapped(error: rustls::Error) -> tonic::Status {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, error);
        tonic::Status::from_error(Box::new(io))
    }

    #[test]
    fn a_servers_expired_certificate_is_named() {
        let status = wrapped(rustls::Error::InvalidCertificate(Cert::Expired));
        let sentence = explain(&status, true).unwrap();
        assert!(
            sentence.contains("server's certificate has expired"),
            "{sentence}"
        );
    }

    #[test]
    fn an_alert_that_arrives_as_text_is_still_recognised() {
        let text = rustls::Error::AlertReceived(Alert::CertificateExpired).to_string();
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, text);
        let status = tonic::Status::from_error(Box::new(io));
        let sentence = explain(&status, true).unwrap();
        assert!(sentence.contains("because it has expired"), "{sentence}");
    }

    #[test]
    fn permission_denied_keeps_the_servers_words() {
        let status = tonic::Status::permission_denied("X needs the headnode role");
        assert_eq!(
            explain(&status, true).unwrap(),
            "permission denied: X needs the headnode role"
        );
    }

    #[test]
    fn other_errors_are_not_explained() {
        let status = tonic::Status::invalid_argument("message is empty");
        assert_eq!(explain(&status, true), None);
    }

    #[test]
    fn only_registro_spiffe_names_with_a_known_role_count() {
        let ca = crate::certs::new_ca(crate::certs::Validity::from_now(Duration::from_secs(60)))
            .unwrap();
        let der = |pem: &str| {
            CertificateDer::from_pem_slice(pem.as_bytes())
                .unwrap()
                .to_vec()
        };
        // The CA itself names no one.
        assert_eq!(identity_of(&der(&ca.cert)), Err(IdentityError::Missing));
        assert_eq!(
            identity_of(b"not a certificate"),
            Err(IdentityError::Unparsable)
        );
    }
}
