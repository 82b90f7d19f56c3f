//! `client health`: one `grpc.health.v1.Health/Check`, with grpc_health_probe's exit codes, so it
//! can be a container's health check.

use std::time::Duration;

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// SERVING.
const OK: i32 = 0;
/// The server could not be reached.
const CANNOT_CONNECT: i32 = 2;
/// The check RPC failed (for example an unknown service).
const RPC_FAILED: i32 = 3;
/// The server answered, but not SERVING.
const NOT_SERVING: i32 = 4;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The service to check; empty means the whole server.
    #[arg(long, env = "REGISTRO_SERVICE", default_value = "")]
    service: String,
}

pub async fn run(addr: &str, timeout: Duration, args: Args) -> i32 {
    let channel = match crate::connect(addr, timeout).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {}", crate::describe(&e));
            return CANNOT_CONNECT;
        }
    };
    let request = HealthCheckRequest {
        service: args.service.clone(),
    };
    match HealthClient::new(channel).check(request).await {
        Ok(reply) => {
            let status = reply.into_inner().status();
            println!("status: {}", status.as_str_name());
            if status == ServingStatus::Serving {
                OK
            } else {
                NOT_SERVING
            }
        }
        Err(status) => {
            eprintln!(
                "error: health check of {:?} failed: {}",
                args.service,
                crate::describe_status(&status)
            );
            RPC_FAILED
        }
    }
}
