//! Who may call what: one table from gRPC method to the roles allowed, enforced by one tower
//! layer in front of every service of a server.
//!
//! Under mutual TLS the transport has already checked that the caller's certificate is signed by
//! the cluster's CA; this layer reads the role from its `spiffe://registro/ROLE/NAME` name
//! ([`crate::tls::identity_of`]) and answers PERMISSION_DENIED, naming the role needed, before
//! any handler runs. A call it lets through carries the caller's [`Caller`] in its extensions.
//!
//! One rule needs the request itself: `Register` must register the name in the caller's own
//! certificate. Rather than buffer and decode the body here, the layer hands the verified
//! identity to the handler and [`check_registered_name`] compares, in one line of `Register`.
//! Without TLS every call goes through (as [`Caller::Anyone`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tonic::codegen::http;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use crate::tls::{Identity, Role};

/// Who may call a method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Any certificate signed by the cluster's CA (health, reflection).
    AnyCertificate,
    /// A certificate with one of these roles.
    Roles(&'static [Role]),
}

const USERS: &[Role] = &[Role::Client, Role::Headnode];

/// The table: gRPC service or method path → who may call it. A path not here is refused, so a
/// service added later is closed until someone decides who may call it.
const TABLE: &[(&str, Access)] = &[
    ("/registro.v1.Store/Store", Access::Roles(USERS)),
    ("/registro.v1.Store/List", Access::Roles(USERS)),
    ("/registro.v1.Heartbeat/Status", Access::Roles(USERS)),
    ("/registro.v1.Heartbeat/Repair", Access::Roles(USERS)),
    // And the NAME of the certificate must be the name registered: see check_registered_name.
    (
        "/registro.v1.Heartbeat/Register",
        Access::Roles(&[Role::Datanode]),
    ),
    (
        "/registro.v1.Datanode/StoreBatch",
        Access::Roles(&[Role::Headnode]),
    ),
    ("/grpc.health.v1.Health/", Access::AnyCertificate),
    (
        "/grpc.reflection.v1.ServerReflection/",
        Access::AnyCertificate,
    ),
    (
        "/grpc.reflection.v1alpha.ServerReflection/",
        Access::AnyCertificate,
    ),
];

/// Who may call `path` (`/package.Service/Method`); `None` when nobody may.
pub fn access(path: &str) -> Option<Access> {
    TABLE
        .iter()
        .find(|(key, _)| {
            if key.ends_with('/') {
                path.starts_with(key)
            } else {
                path == *key
            }
        })
        .map(|(_, access)| *access)
}

/// The caller of a request that got through, in the request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A plaintext server: nobody is authenticated, everything is allowed.
    Anyone,
    /// The identity in a certificate signed by the cluster's CA (`None`: it names none).
    Certified(Option<Identity>),
}

/// Decides a call to `path` from the peer's certificate chain (`None`: no TLS on this
/// connection, which on a TLS server cannot happen, so it is refused).
pub fn authorize(path: &str, peer_certificate: Option<&[u8]>) -> Result<Caller, Status> {
    let method = path.trim_start_matches('/');
    let Some(der) = peer_certificate else {
        return Err(Status::unauthenticated(format!(
            "{method} needs a client certificate signed by the cluster's CA"
        )));
    };
    let identity = crate::tls::identity_of(der);
    match access(path) {
        None => Err(Status::permission_denied(format!(
            "{method} is not open to any role"
        ))),
        Some(Access::AnyCertificate) => Ok(Caller::Certified(identity.ok())),
        Some(Access::Roles(roles)) => {
            let needed = roles
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(" or ");
            match identity {
                Ok(id) if roles.contains(&id.role) => Ok(Caller::Certified(Some(id))),
                Ok(id) => Err(Status::permission_denied(format!(
                    "{method} needs the {needed} role; this certificate is {id}"
                ))),
                Err(e) => Err(Status::permission_denied(format!(
                    "{method} needs the {needed} role; {e}"
                ))),
            }
        }
    }
}

/// `Register`'s rule: under TLS, a datanode may only register the name in its own certificate.
pub fn check_registered_name(extensions: &tonic::Extensions, name: &str) -> Result<(), Status> {
    match extensions.get::<Caller>() {
        Some(Caller::Anyone) => Ok(()),
        Some(Caller::Certified(Some(id))) if id.name == name => Ok(()),
        Some(Caller::Certified(Some(id))) => Err(Status::permission_denied(format!(
            "registro.v1.Heartbeat/Register: this certificate is {id} and may only register the name {:?}, not {name:?}",
            id.name
        ))),
        Some(Caller::Certified(None)) => Err(Status::permission_denied(
            "registro.v1.Heartbeat/Register needs the datanode role",
        )),
        // The layer always leaves a Caller: a request without one did not pass through it.
        None => Err(Status::internal(
            "no caller identity: the auth layer is missing",
        )),
    }
}

/// The tower layer: checks every call against the table ([`access`]) when `enforce` (the server runs mutual
/// TLS), lets everything through as [`Caller::Anyone`] otherwise.
#[derive(Debug, Clone, Copy)]
pub struct AuthLayer {
    enforce: bool,
}

impl AuthLayer {
    pub fn new(enforce: bool) -> Self {
        Self { enforce }
    }
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = Auth<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Auth {
            inner,
            enforce: self.enforce,
        }
    }
}

/// The service [`AuthLayer`] wraps around a server's routes.
#[derive(Debug, Clone)]
pub struct Auth<S> {
    inner: S,
    enforce: bool,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for Auth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let caller = if self.enforce {
            let certs = request
                .extensions()
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.peer_certs());
            authorize(
                request.uri().path(),
                certs.as_deref().and_then(|c| c.first()).map(|c| c.as_ref()),
            )
        } else {
            Ok(Caller::Anyone)
        };
        match caller {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                // The clone that was made ready serves this call; a fresh clone waits for the next.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                Box::pin(inner.call(request))
            }
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_registro_method_has_a_rule_and_unknown_ones_have_none() {
        assert_eq!(
            access("/registro.v1.Datanode/StoreBatch"),
            Some(Access::Roles(&[Role::Headnode]))
        );
        assert_eq!(
            access("/grpc.health.v1.Health/Watch"),
            Some(Access::AnyCertificate)
        );
        assert_eq!(access("/registro.v1.Store/Nope"), None);
        assert_eq!(access("/grpc.health.v1.HealthX/Check"), None);
    }

    #[test]
    fn no_certificate_is_unauthenticated() {
        let e = authorize("/registro.v1.Store/Store", None).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
}
